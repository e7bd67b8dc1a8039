"""Pretrained encoders: Whisper (weights without PyTorch, the encoder module), wav2vec2/HuBERT/WavLM backbones, Hugging Face checkpoints and the audio-classification adapter."""
