"""Simulate SpeechBrain models on memristor (ReRAM) crossbars."""
