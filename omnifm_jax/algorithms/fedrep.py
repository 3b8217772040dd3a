"""FedRep (Collins et al., ICML 2021, "Exploiting Shared Representations for Personalized
Federated Learning"), as PFLlib implements it.

The head is personal, the body (everything else) shared. Each round a participant first
trains its head alone for ``plocal_epochs`` epochs (body frozen), then the body alone for the
run's ``local_epochs`` (head frozen), and uploads the body; the server averages bodies by n_k.
Default ``plocal_epochs=1`` (PFLlib's ``-pls``).
"""
from omnifm_jax import checks
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import Phase, personalized_sgd
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["HEAD", "BODY", "validate", "fedrep"]

HEAD = r"^params/head/"
BODY = r"^params/(?!head/)"


def validate(hp, context):
    del context
    checks.integer("plocal_epochs", hp["plocal_epochs"], 0)


@register("fedrep", validate=validate)
def fedrep(*, task, backbone, optimizer, local_epochs, batch_size,
           weight_init="flax", drop_last=True, aggregate_bn_stats=False,
           plocal_epochs: int = 1):
    """FedRep: ``plocal_epochs`` head epochs, then ``local_epochs`` body epochs."""
    model = TokenModel(backbone=backbone, head=task.make_head())
    return personalized_sgd(name="fedrep", model=model, task=task, optimizer=optimizer, personal_patterns=(HEAD,),
                            local_epochs=local_epochs, batch_size=batch_size, weight_init=weight_init,
                            drop_last=drop_last,
                            aggregate_bn_stats=aggregate_bn_stats,
                            phases=(Phase(plocal_epochs, (HEAD,)), Phase(local_epochs, (BODY,))))
