// Tokenizers and text encoders live here.
