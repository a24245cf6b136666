"""lacal inside training loops: a PyTorch Lightning callback (`lacal.integrations.lightning`), a Hugging Face
`Trainer` callback and `compute_metrics` (`lacal.integrations.huggingface`), a torchmetrics metric
(`lacal.integrations.torchmetrics`) and a scikit-learn meta-estimator (`lacal.integrations.sklearn`).

Each module imports its framework, so import the one you use (`pip install lacal[lightning]`, `lacal[transformers]`,
`lacal[torchmetrics]`, `lacal[sklearn]`); `import lacal` and this package import none of them.
"""
