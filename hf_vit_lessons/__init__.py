"""The article's exercises and experiments, and the benchmark: they import the library, never the reverse.

report          tables, results files and plots every lesson writes
loop            a plain PyTorch training loop on in-memory tensors, and the article's CNN
vit_vs_cnn      exercise 1 (the article's ViT against a CNN) and the data-efficiency comparison
patches         exercise 2: patches, their reconstruction, position-embedding similarity
attention       exercise 3 (full vs window attention cost) and attention rollout
recipe_study    the recipe study: plain, auto, deit and a distilled DeiT against a small CNN, over seeds
photo_patches   the study's second dataset: colour crops of the photographs scikit-learn ships
pretraining_study   SimMIM / MAE pretraining without labels, then fine-tuning on a fraction of the labels
segmentation    UperNet on ViT (simple feature pyramid) and Swin backbones, on canvases of digits
benchmark       speed and memory against timm and transformers, ONNX in onnxruntime, the input pipeline
                (needs timm and onnxruntime: `pip install hf_vit[bench]`)
"""
