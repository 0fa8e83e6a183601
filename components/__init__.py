"""KFP v2 components: one per round step, each a thin shell over ``mmfl.kfp.tasks``.

The component functions run inside the mmfl image (``MMFL_IMAGE``, default below); their bodies
import mmfl there, so nothing here is needed at run time except the image. Cluster settings
(GPU, node selector, tolerations, secrets, retries) are applied per task in ``pipelines/``.
"""

import os

DEFAULT_IMAGE = "ghcr.io/mmfl/mmfl-cuda:0.1.0"
BASE_IMAGE = os.environ.get("MMFL_IMAGE", DEFAULT_IMAGE)
