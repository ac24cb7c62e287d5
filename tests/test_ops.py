"""t5lite.ops: the custom-VJP products against plain autodiff, and einsum's spec errors."""
import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite.model import ops


def _reference(x, w):
  return jnp.einsum("bld,df->blf", x, w)


@pytest.mark.parametrize("D,F", [(16, 24), (8, 200)])  # F >= 8 D takes the LM-head branch
def test_matmul_matches_autodiff_fp32(D, F):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (3, 5, D))
  w = jax.random.normal(kw, (D, F))
  g = jax.random.normal(kg, (3, 5, F))
  y, vjp = jax.vjp(ops.matmul, x, w)
  y_ref, vjp_ref = jax.vjp(_reference, x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(vjp(g), vjp_ref(g)):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("one_device", [False, True])
@pytest.mark.parametrize("D,F", [(64, 48), (16, 256)])
def test_matmul_bf16_accumulates_in_float32(D, F, one_device):
  """bf16 operands give bf16 results and gradients equal to the float32 product rounded once.
  one_device: traced under a 1-device mesh, where the weight gradient takes the row-major x^T
  copy (_row_major_transpose: the flattened [7*2*D] array behind a barrier in the jaxpr)."""
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(1), 3)
  x32 = jax.random.normal(kx, (2, 7, D))
  w32 = jax.random.normal(kw, (D, F))
  g32 = jax.random.normal(kg, (2, 7, F))
  x, w, g = (a.astype(jnp.bfloat16) for a in (x32, w32, g32))

  def forward_backward(x, w, g):
    y, vjp = jax.vjp(ops.matmul, x, w)
    return (y,) + vjp(g)

  mesh = jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices()[:1])
  with jax.set_mesh(mesh) if one_device else contextlib.nullcontext():
    jaxpr = str(jax.make_jaxpr(forward_backward)(x, w, g))
    y, dx, dw = jax.jit(forward_backward)(x, w, g)
  assert (f"bf16[{2 * 7 * D}]" in jaxpr) == one_device
  assert y.dtype == dx.dtype == dw.dtype == jnp.bfloat16
  f32 = lambda a: a.astype(jnp.float32)
  y_ref, vjp_ref = jax.vjp(_reference, f32(x), f32(w))
  dx_ref, dw_ref = vjp_ref(f32(g))
  for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
    # one bf16 rounding of the float32 result: relative error <= 2^-8 (plus float32 noise)
    np.testing.assert_allclose(f32(got), want, rtol=2 ** -8, atol=1e-3)


def test_matmul_float32_result_bf16():
  """The LM head: bf16 operands, float32 logits; gradients come back in bf16 and match float32."""
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(2), 3)
  x32, w32 = jax.random.normal(kx, (2, 6, 32)), jax.random.normal(kw, (32, 300))
  g32 = jax.random.normal(kg, (2, 6, 300))
  bf = lambda a: a.astype(jnp.bfloat16)
  y, vjp = jax.vjp(lambda x, w: ops.matmul(x, w, float32_result=True), bf(x32), bf(w32))
  assert y.dtype == jnp.float32
  dx, dw = vjp(g32)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  f32 = lambda a: a.astype(jnp.float32)
  y_ref, vjp_ref = jax.vjp(_reference, f32(bf(x32)), f32(bf(w32)))
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-4)  # float32 accumulation, no rounding
  for got, want in zip((dx, dw), vjp_ref(f32(bf(g32)))):
    np.testing.assert_allclose(f32(got), want, rtol=2 ** -8, atol=1e-2)


@pytest.mark.parametrize("spec,shapes", [
    ("bqhk,bthk->bhqt", ((2, 5, 3, 8), (2, 7, 3, 8))),   # attention logits
    ("bhqt,bthk->bqhk", ((2, 3, 5, 7), (2, 7, 3, 8))),   # attention-weighted values
])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_einsum_matches_autodiff(spec, shapes, dtype):
  """ops.einsum: float32 result; for bf16 a custom backward (bf16 operands, float32
  accumulation) that matches float32 autodiff up to bf16 rounding; float32 is plain autodiff."""
  ka, kb, kg = jax.random.split(jax.random.PRNGKey(3), 3)
  a, b = (jax.random.normal(k, s).astype(dtype) for k, s in ((ka, shapes[0]), (kb, shapes[1])))
  y, vjp = jax.jit(lambda a, b: jax.vjp(lambda a, b: ops.einsum(spec, a, b), a, b))(a, b)
  assert y.dtype == jnp.float32
  g = jax.random.normal(kg, y.shape)
  da, db = vjp(g)
  assert da.dtype == db.dtype == dtype
  f32 = lambda t: t.astype(jnp.float32)
  y_ref, vjp_ref = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), f32(a), f32(b))
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  g_ref = f32(g.astype(dtype))  # the bf16 backward rounds the cotangent first
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2 ** -7, atol=2e-2)
  for got, want in zip((da, db), vjp_ref(g_ref)):
    np.testing.assert_allclose(f32(got), want, **tol)


@pytest.mark.parametrize("spec,message", [
    ("bqhk,bthk", "must be explicit with two operands"),
    ("bqhk->bhq", "must be explicit with two operands"),
    ("bqhkx,bthk->bhqt", "index x of 'bqhkx' is in neither"),
])
def test_einsum_bad_spec_is_named(spec, message):
  a = jnp.ones((2, 3, 4, 5), jnp.bfloat16)
  with pytest.raises(ValueError, match=message) as err:
    ops.einsum(spec, a, a)
  assert repr(spec) in str(err.value)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_project_equals_one_product_per_weight(n):
  """ops.project stacks the weights into one product; values and gradients equal n einsums."""
  keys = jax.random.split(jax.random.PRNGKey(3), 2 * n + 1)
  x = jax.random.normal(keys[0], (2, 5, 16))
  ws = tuple(jax.random.normal(k, (16, 3, 4)) for k in keys[1:n + 1])
  gs = tuple(jax.random.normal(k, (2, 5, 3, 4)) for k in keys[n + 1:])

  def loss(f, x, ws):
    return sum(jnp.sum(y * g) for y, g in zip(f(x, ws), gs))

  fused = lambda x, ws: ops.project(x, ws, jnp.float32)
  separate = lambda x, ws: tuple(jnp.einsum("bld,dhk->blhk", x, w) for w in ws)
  for got, want in zip(fused(x, ws), separate(x, ws)):
    assert got.shape == want.shape == (2, 5, 3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  (dx, dws), (dx_ref, dws_ref) = (jax.grad(functools.partial(loss, f), argnums=(0, 1))(x, ws)
                                  for f in (fused, separate))
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-4)
  for got, want in zip(dws, dws_ref):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
