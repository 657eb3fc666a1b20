"""phasemix: studying and predicting phase transitions that data causes in LM training."""

__version__ = "0.1.0"
