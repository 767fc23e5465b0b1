"""Scores of generated digits in the digit classifier's features: FID and intra-class FID (`fid`), KID
(`kid`), precision/recall/density/coverage (`prdc`), and digit coverage from its predictions (`coverage`)."""
