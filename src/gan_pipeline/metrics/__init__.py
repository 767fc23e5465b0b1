"""Scores of generated digits: classifier FID (`metrics.fid`) and digit coverage (`metrics.coverage`)."""
