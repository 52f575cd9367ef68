"""featstore"""
