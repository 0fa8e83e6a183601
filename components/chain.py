"""continue_chain: the last task of a segment run submits the next segment through the KFP API."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def continue_chain(config_json: str, kfp_run_id: str, start_round: int, rounds_per_run: int, state: Input[Artifact],
                   next_run: Output[Artifact], kfp_api: str = ""):
    """If rounds are left (read from the store), create the next segment run like this one."""
    import json

    from mmfl.kfp.chain import continue_task

    done = continue_task(config_json, kfp_run_id, start_round, rounds_per_run, kfp_api)
    with open(next_run.path, "w") as f:
        json.dump(done, f)
    next_run.metadata.update({k: v for k, v in done.items() if isinstance(v, (str, int))})
