"""Loss-family tests: hand-computed cases, registry behaviour and numerical properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.losses import (
    LOSSES,
    LossOutput,
    UnknownLossError,
    compute_loss,
    discopop_loss,
    dlrml_loss,
    dpo_loss,
    get_loss,
    hinge_loss,
    ipo_loss,
    lrml_initial_margin_gradient,
    lrml_is_genuinely_divergent,
    mix_statistics,
)

# The three pairs used by every hand-computed case:
#   pi_c = [0, -1, -2], pi_r = [-1, -1, 0], ref_c = [0, 0, -1], ref_r = [0, 0, 0]
#   rho = (pi_c - pi_r) - (ref_c - ref_r):
#     i=0: (0 - (-1)) - (0 - 0)  =  1
#     i=1: (-1 - (-1)) - (0 - 0) =  0
#     i=2: (-2 - 0) - (-1 - 0)   = -1
PI_C = torch.tensor([0.0, -1.0, -2.0])
PI_R = torch.tensor([-1.0, -1.0, 0.0])
REF_C = torch.tensor([0.0, 0.0, -1.0])
REF_R = torch.tensor([0.0, 0.0, 0.0])
RHO = torch.tensor([1.0, 0.0, -1.0])


def _assert_close(actual: torch.Tensor, expected: list[float]) -> None:
    """float32 loss against an expected value computed in float64 from the docstring's derivation."""
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-6)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_hand_case_margin_and_rewards():
    """rho = [1, 0, -1]; rewards with beta=2: chosen = 2*(pi_c - ref_c) = 2*[0, -1, -1] = [0, -2, -2],
    rejected = 2*(pi_r - ref_r) = 2*[-1, -1, 0] = [-2, -2, 0]."""
    torch.testing.assert_close((PI_C - PI_R) - (REF_C - REF_R), RHO)
    out = dpo_loss(PI_C, PI_R, REF_C, REF_R, beta_kl=2.0)
    _assert_close(out.chosen_rewards, [0.0, -2.0, -2.0])
    _assert_close(out.rejected_rewards, [-2.0, -2.0, 0.0])


def test_hand_case_dpo():
    """beta=1: L = -log sigma(rho) = log(1 + exp(-rho)) = softplus(-rho):
    rho=1 -> log(1 + e^-1); rho=0 -> log 2; rho=-1 -> log(1 + e)."""
    out = dpo_loss(PI_C, PI_R, REF_C, REF_R, beta_kl=1.0)
    _assert_close(out.losses, [math.log(1 + math.exp(-1)), math.log(2), math.log(1 + math.e)])
    assert out.mix is None


def test_hand_case_ipo():
    """beta=0.5: 1 / (2 beta) = 1, L = (rho - 1)^2 = [0, 1, 4]."""
    _assert_close(ipo_loss(PI_C, PI_R, REF_C, REF_R, beta_kl=0.5).losses, [0.0, 1.0, 4.0])


def test_hand_case_hinge():
    """beta=1: L = max(0, 1 - rho) = [0, 1, 2]."""
    _assert_close(hinge_loss(PI_C, PI_R, REF_C, REF_R, beta_kl=1.0).losses, [0.0, 1.0, 2.0])


def _coupled_case(z: float) -> float:
    """a = z: since sigma(z) e^-z = 1 / (1 + e^z) = sigma(-z), L = (1 - sigma(z)) softplus(-z) + sigma(z) e^-z
    = sigma(-z) * (softplus(-z) + 1)."""
    return _sigmoid(-z) * (_softplus(-z) + 1.0)


def test_hand_case_dlrml():
    """beta_kl=1, beta_mix=0.05, tau=0.05 -> a = beta_mix*rho/tau = rho = z, m = sigma(rho), and
    L = sigma(-rho) * (softplus(-rho) + 1) (see :func:`_coupled_case`):
      rho=1:  sigma(-1) (log(1 + e^-1) + 1)
      rho=0:  0.5 (log 2 + 1)
      rho=-1: sigma(1) (log(1 + e) + 1)
    Mixing coefficient m = sigma(rho) = [sigma(1), 0.5, sigma(-1)]."""
    out = dlrml_loss(PI_C, PI_R, REF_C, REF_R, beta_kl=1.0, beta_mix=0.05, tau=0.05)
    _assert_close(
        out.losses,
        [
            _sigmoid(-1) * (math.log(1 + math.exp(-1)) + 1),
            0.5 * (math.log(2) + 1),
            _sigmoid(1) * (math.log(1 + math.e) + 1),
        ],
    )
    _assert_close(out.mix, [_sigmoid(1), 0.5, _sigmoid(-1)])


def test_hand_case_dlrml_decoupled():
    """beta_kl=1, beta_mix=0.1, tau=0.05 -> a = 2 rho, m = sigma(2 rho), z = rho;
    L = (1 - m) softplus(-z) + m e^-z:
      rho=1:  (1 - sigma(2)) softplus(-1) + sigma(2) e^-1
      rho=0:  0.5 log 2 + 0.5
      rho=-1: (1 - sigma(-2)) softplus(1) + sigma(-2) e
    """
    out = dlrml_loss(PI_C, PI_R, REF_C, REF_R, beta_kl=1.0, beta_mix=0.1, tau=0.05)
    expected = [
        (1 - _sigmoid(2)) * _softplus(-1) + _sigmoid(2) * math.exp(-1),
        0.5 * math.log(2) + 0.5,
        (1 - _sigmoid(-2)) * _softplus(1) + _sigmoid(-2) * math.e,
    ]
    _assert_close(out.losses, expected)


def test_discopop_is_dlrml_with_coupled_beta():
    """DiscoPOP with beta=1, tau=1 gives a = z = rho: L = sigma(-rho) (softplus(-rho) + 1), as in the dLRML case."""
    out = discopop_loss(PI_C, PI_R, REF_C, REF_R, beta_kl=1.0, tau=1.0)
    _assert_close(out.losses, [_coupled_case(rho) for rho in RHO.tolist()])
    for beta in (0.01, 0.05, 0.5, 5.0):
        torch.testing.assert_close(
            discopop_loss(PI_C, PI_R, REF_C, REF_R, beta_kl=beta).losses,
            dlrml_loss(PI_C, PI_R, REF_C, REF_R, beta_kl=beta, beta_mix=beta).losses,
        )


def test_registry_names_and_unknown_loss_lists_known():
    assert set(LOSSES) == {"dpo", "ipo", "hinge", "discopop", "dlrml", "dlrml_learnable"}
    assert get_loss("dlrml").uses_beta_mix and not get_loss("discopop").uses_beta_mix
    assert get_loss("dlrml_learnable").learnable == ("beta_mix",)
    assert get_loss("ipo").logp_reduction == "mean"
    with pytest.raises(UnknownLossError) as err:
        get_loss("dpoo")
    for name in LOSSES:
        assert name in str(err.value)


def test_compute_loss_ignores_unused_and_requires_needed_hparams():
    out = compute_loss("dpo", PI_C, PI_R, REF_C, REF_R, beta_kl=1.0, beta_mix=123.0)
    torch.testing.assert_close(out.losses, dpo_loss(PI_C, PI_R, REF_C, REF_R, beta_kl=1.0).losses)
    with pytest.raises(ValueError, match="beta_mix"):
        compute_loss("dlrml", PI_C, PI_R, REF_C, REF_R, beta_kl=1.0)


def _rho_batch(rho: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Policy chosen log-prob carries the whole margin; the other three are zero."""
    pi_c = rho.to(dtype).clone().requires_grad_(True)
    zeros = torch.zeros_like(pi_c)
    return pi_c, zeros, zeros, zeros


HPARAMS = {"beta_kl": 0.5, "beta_mix": 0.2}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_rewards_are_detached(name):
    pi_c, pi_r, ref_c, ref_r = _rho_batch(torch.tensor([0.5, -0.5, 2.0]), torch.float32)
    out: LossOutput = compute_loss(name, pi_c, pi_r, ref_c, ref_r, **HPARAMS)
    assert out.losses.requires_grad
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert out.mix is None or not out.mix.requires_grad


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("beta_kl", [0.01, 0.1, 1.0, 5.0])
def test_preferring_chosen_lowers_the_loss(name, beta_kl):
    """From a dispreferred margin, through indifference, to the loss's preferred margin the loss falls.

    The preferred margin is 1 / (2 beta) for IPO (its minimum) and beta * rho = 10 for the others. LRML is
    non-convex near rho = 0 (Lu et al. 2024, Sec. 5), so only these three points are compared for it.
    """
    preferred = 1.0 / (2.0 * beta_kl) if name == "ipo" else 10.0 / beta_kl
    rho = torch.tensor([-10.0 / beta_kl, 0.0, preferred], dtype=torch.float64)
    losses = compute_loss(name, *_rho_batch(rho, torch.float64), beta_kl=beta_kl, beta_mix=beta_kl).losses
    assert losses[0] > losses[1] > losses[2]


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@settings(max_examples=25, deadline=None)
@given(
    rho=st.sampled_from([-1e4, -300.0, -50.0, -1.0, 0.0, 1.0, 50.0, 300.0, 1e4]),
    beta_kl=st.sampled_from([0.01, 0.05, 0.5, 5.0]),
    beta_mix=st.sampled_from([0.05, 0.2, 0.5, 5.0]),
)
def test_finite_loss_and_grads_at_extreme_margins(name, dtype, rho, beta_kl, beta_mix):
    """Wherever the mathematical loss is finite, loss and gradient are finite in fp32/bf16 up to |rho| = 1e4.

    The only infinite case is the genuine dLRML divergence (beta_kl > beta_mix / tau with rho -> -inf), which
    must surface as inf rather than being clamped away.
    """
    spec = get_loss(name)
    mix = beta_mix if spec.uses_beta_mix else beta_kl
    pi_c, pi_r, ref_c, ref_r = _rho_batch(torch.tensor([rho]), dtype)
    loss = compute_loss(name, pi_c, pi_r, ref_c, ref_r, beta_kl=beta_kl, beta_mix=beta_mix).losses.sum()
    exact = compute_loss(
        name,
        *_rho_batch(torch.tensor([rho], dtype=torch.float64), torch.float64),
        beta_kl=beta_kl,
        beta_mix=mix,
    ).losses.item()
    genuinely_infinite = not math.isfinite(exact) or exact > torch.finfo(dtype).max
    if genuinely_infinite:
        assert spec.is_lrml_family and rho < 0 and lrml_is_genuinely_divergent(beta_kl, mix)
        assert torch.isinf(loss)
        return
    loss.backward()
    assert torch.isfinite(loss), (name, rho, beta_kl, beta_mix, loss)
    assert torch.isfinite(pi_c.grad).all(), (name, rho, beta_kl, beta_mix, pi_c.grad)


def test_naive_discopop_is_nan_where_the_log_space_form_is_finite():
    """Naive sigma(a) * exp(-z) is 0 * inf = NaN at large beta * |rho|; the log-space form is exact."""
    rho = torch.tensor([-2000.0])
    beta = 1.0
    z = beta * rho
    naive = torch.sigmoid(z / 0.05) * torch.exp(-z)
    assert torch.isnan(naive).all()
    ours = discopop_loss(*_rho_batch(rho, torch.float32), beta_kl=beta).losses
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, torch.tensor([2000.0]), atol=1e-3, rtol=1e-5)  # ~softplus(2000) = 2000


def test_genuine_divergence_is_reported_not_clamped():
    """beta_kl = 5 > beta_mix / tau = 1: exp((1 - 5) rho) overflows as rho -> -inf."""
    assert lrml_is_genuinely_divergent(5.0, 0.05)
    assert not lrml_is_genuinely_divergent(0.05, 0.2)
    out = dlrml_loss(*_rho_batch(torch.tensor([-100.0]), torch.float32), beta_kl=5.0, beta_mix=0.05)
    assert torch.isinf(out.losses).all()


def test_learnable_beta_mix_receives_gradient():
    log_beta_mix = torch.tensor(math.log(0.2), requires_grad=True)
    out = compute_loss("dlrml_learnable", PI_C, PI_R, REF_C, REF_R, beta_kl=0.5, beta_mix=log_beta_mix.exp())
    out.losses.mean().backward()
    assert log_beta_mix.grad is not None and torch.isfinite(log_beta_mix.grad) and log_beta_mix.grad != 0


def test_mix_statistics():
    """m = [0.001, 0.5, 0.995, 0.3]: mean = (0.001 + 0.5 + 0.995 + 0.3) / 4; saturated (< 0.01 or > 0.99): 2 of 4."""
    mix = [0.001, 0.5, 0.995, 0.3]
    stats = mix_statistics(torch.tensor(mix))
    assert stats["mix/mean"].item() == pytest.approx(sum(mix) / 4)
    assert stats["mix/saturated_frac"].item() == 2 / 4


# ---------------------------------------------------------------------------------------------- loss forms


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_literal_form_overflows_to_nan_where_the_stable_form_matches_float64(dtype):
    """beta = 1 (DiscoPOP), rho = -100: -z = 100 > ~88.7 = log(max fp32/bf16), so exp(-z) = inf, while
    a = beta * rho / tau = -2000 gives m = sigmoid(a) = 0 exactly: the literal m * exp(-z) is 0 * inf = NaN.
    The true loss is finite: (1 - m) softplus(100) + exp(log sigma(-2000) + 100) ~ 100 (the second term ~e^-1900),
    which the stable form returns, equal to the float64 evaluation of the stable expression."""
    rho = torch.tensor([-100.0, 0.5, 3.0])
    zeros = torch.zeros(3)
    literal = discopop_loss(
        rho.to(dtype), zeros.to(dtype), zeros.to(dtype), zeros.to(dtype), beta_kl=1.0, form="literal"
    )
    stable = discopop_loss(rho.to(dtype), zeros.to(dtype), zeros.to(dtype), zeros.to(dtype), beta_kl=1.0)
    reference = discopop_loss(rho.double(), zeros.double(), zeros.double(), zeros.double(), beta_kl=1.0)
    assert torch.isnan(literal.losses[0]) and torch.isfinite(stable.losses).all()
    rtol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(stable.losses.double(), reference.losses, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", ["discopop", "dlrml", "dlrml_learnable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_both_forms_agree_wherever_the_literal_one_is_finite(name, dtype):
    rho = torch.linspace(-60, 60, 241, dtype=torch.float64)
    zeros = torch.zeros_like(rho)
    batch = [t.to(dtype) for t in (rho, zeros, zeros, zeros)]
    hparams = {"beta_kl": 0.8, "beta_mix": 0.3}
    literal = compute_loss(name, *batch, **hparams, form="literal").losses
    stable = compute_loss(name, *batch, **hparams, form="stable").losses
    finite = torch.isfinite(literal)
    assert finite.any()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(literal[finite].double(), stable[finite].double(), rtol=tol, atol=tol)


def test_literal_form_matches_trl_discopop_expression():
    """TRL 1.16 ``discopop``: logits = beta * rho, m = sigmoid(logits / tau),
    L = -logsigmoid(logits) * (1 - m) + exp(-logits) * m: the literal form, term for term."""
    beta, tau = 0.5, 0.05
    logits = beta * RHO
    m = torch.sigmoid(logits / tau)
    expected = -torch.nn.functional.logsigmoid(logits) * (1 - m) + torch.exp(-logits) * m
    out = discopop_loss(PI_C, PI_R, REF_C, REF_R, beta_kl=beta, tau=tau, form="literal")
    torch.testing.assert_close(out.losses, expected)


def test_literal_overflow_is_classified_numerical():
    """The classifier evaluates the stable form in float64: the literal form's NaN at rho = -100 is numerical."""
    from trainers.collapse import classify_non_finite

    logps = (torch.tensor([-100.0]), torch.zeros(1), torch.zeros(1), torch.zeros(1))
    hparams = {"beta_kl": 1.0, "tau": 0.05, "form": "literal"}
    assert torch.isnan(compute_loss("discopop", *logps, **hparams).losses).all()
    assert classify_non_finite(get_loss("discopop"), hparams, logps, check_grad=True) == "numerical"


@pytest.mark.parametrize(("beta_kl", "beta_mix"), [(0.05, 0.2), (1.0, 0.2), (0.5, 0.05), (0.05, 0.05), (0.42, 0.2)])
def test_initial_margin_gradient_matches_autograd_and_its_sign_rule(beta_kl, beta_mix):
    """At rho = 0 (every pair at initialisation) dL/drho = (beta_mix / (4 tau)) (1 - ln 2) - (3/4) beta_kl (see
    :func:`lrml_initial_margin_gradient`); positive, i.e. margins first pushed the wrong way, exactly when
    beta_kl < beta_mix (1 - ln 2) / (3 tau)."""
    rho = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    dlrml_loss(rho, zero, zero, zero, beta_kl=beta_kl, beta_mix=beta_mix).losses.sum().backward()
    expected = beta_mix / (4 * 0.05) * (1 - math.log(2)) - 0.75 * beta_kl
    assert rho.grad.item() == pytest.approx(expected, rel=1e-9)
    assert lrml_initial_margin_gradient(beta_kl, beta_mix) == pytest.approx(expected, rel=1e-12)
    assert (expected > 0) == (beta_kl < beta_mix * (1 - math.log(2)) / (3 * 0.05))


def test_discopop_at_tau_005_always_starts_by_lowering_the_margins():
    for beta in (0.01, 0.05, 0.25, 1.0):
        assert lrml_initial_margin_gradient(beta, beta) > 0
