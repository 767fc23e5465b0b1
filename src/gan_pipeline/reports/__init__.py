"""What people look at: the HTML report of all experiments, the CI retrain summary, and the offline
template that `dvc plots show` renders into (vega, vega-lite and vega-embed inlined, no CDN)."""
