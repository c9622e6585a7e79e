"""The autoregressive model families, one file each."""
