"""The core every door opens onto: the artifact (the one owner of its format), the image codec, the batched
engine, and the `.npy` array format.

artifact (save/load the TorchScript file and its meta.json), codec (image bytes <-> arrays, token JSON),
engine (runs the artifact), arrays (the `.npy` bodies of the HTTP API and the benchmark).
"""
