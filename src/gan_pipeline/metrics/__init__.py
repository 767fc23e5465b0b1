"""Scores of generated images in two feature spaces: the digit classifier's (`fid`, `kid`, `prdc`, and digit
coverage from its predictions in `coverage`) and the standard TF Inception's (`inception`), with `suite`
naming each metric after its backend."""
