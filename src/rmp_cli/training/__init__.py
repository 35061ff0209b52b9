"""ANN training: the loop (loop.py), its checkpoints (checkpoint.py: model.pt / last.pt with
the composed config) and their float16 copy (half_checkpoint.py).

Imports models/, data/, runs/ and config; nothing of snn/, convert/, report/ or commands/.
"""
