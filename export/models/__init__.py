"""One module per network: classes, then the checkpoint filter, then its configurations."""
