"""api/ftapi"""
