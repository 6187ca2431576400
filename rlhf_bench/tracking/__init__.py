"""W&B logging and the local run record."""
