"""operator/ftoperator"""
