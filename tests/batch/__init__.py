"""Tests of the batch operator (``CerebraformBatchGenerateOperator``) against the emulator."""
