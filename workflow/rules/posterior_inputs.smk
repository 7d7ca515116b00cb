# Params of the posterior rules (workflow/rules/posterior.smk).
from weightflow.names import POSTERIOR_BASELINES


def posterior_params(method=None):
    """params.cfg of a posterior stage: the base fields, the prior (posterior.prior_std, ensemble.init_std) and only
    posterior.{method} — editing one method's settings reruns only that method's rules."""
    sections = ("posterior", "ensemble")

    def params(wildcards):
        cfg = experiment_params(config, wildcards.experiment, sections)
        post = cfg["posterior"]
        cfg["posterior"] = {"prior_std": post["prior_std"], **({method: post[method]} if method else {})}
        cfg["ensemble"] = {"init_std": cfg["ensemble"]["init_std"]}
        return cfg

    return params
