"""crds/ftcrd"""
