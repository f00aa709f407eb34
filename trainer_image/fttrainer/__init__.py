"""trainer_image/fttrainer"""
