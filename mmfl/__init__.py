"""mmfl: multimodal federated learning with missing modalities.

The package is layered one way: a pure core (``data``, ``models``, ``methods``,
``aggregation``, ``scheduling``) under the round steps (``engine.steps``), which the local
engine and the Kubeflow components both call. The core never imports kfp, minio or mlflow.
"""

__version__ = "0.1.0"
