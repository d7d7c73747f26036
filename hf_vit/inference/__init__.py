"""Using a trained classifier: evaluation reports, prediction over folders, attention overlays, a browser demo."""
