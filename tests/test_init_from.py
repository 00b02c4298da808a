"""pjx.init_from: pretrain -> fine-tune parameter bridge."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pjx import checkpoint as ck
from pjx.init_from import init_from

V, D = 12, 8


class Encoder(nn.Module):
    vocab: int = V

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(self.vocab, D, name="word_embeddings")(ids)
        return nn.Dense(D, name="dense")(x)


class Pretrain(nn.Module):  # bert/... + cls/...
    vocab: int = V

    @nn.compact
    def __call__(self, ids):
        h = Encoder(self.vocab, name="bert")(ids)
        return nn.Dense(self.vocab, name="cls")(h)


class Classifier(nn.Module):  # bert/... + classifier/...
    vocab: int = V

    @nn.compact
    def __call__(self, ids):
        h = Encoder(self.vocab, name="bert")(ids)
        return nn.Dense(3, name="classifier")(h[:, 0])


IDS = jnp.zeros((2, 4), jnp.int32)


def flat(tree):
    return {ck.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture
def pretrained(tmp_path):
    params = Pretrain().init(jax.random.key(0), IDS)["params"]
    # The source run's optimizer is irrelevant to init_from: use an odd one.
    state = {
        "step": jnp.array(5),
        "params": params,
        "opt_state": optax.sgd(0.1, momentum=0.9).init(params),
    }
    m = ck.create_manager(tmp_path / "run" / "checkpoints", checkpoint_every=5)
    ck.save(m, 5, state, config={"model": {"name": "bert", "size": "tiny"}})
    m.wait_until_finished()
    return tmp_path / "run", params


def test_loaded_new_dropped(pretrained, capsys):
    workdir, src = pretrained
    fresh = Classifier().init(jax.random.key(1), IDS)["params"]
    params, report = init_from(workdir, fresh)
    out = capsys.readouterr().out
    loaded = {p for p, _ in report.loaded}
    assert loaded == {"bert/word_embeddings/embedding", "bert/dense/kernel", "bert/dense/bias"}
    assert report.new == [("classifier/bias", (3,)), ("classifier/kernel", (D, 3))]
    assert sorted(report.dropped) == [("cls/bias", (V,)), ("cls/kernel", (D, V))]
    assert "3 loaded, 0 resized, 2 newly initialised, 2 dropped" in out
    assert "dropped  cls/kernel" in out and "(8, 12)" in out
    got, s, f = flat(params), flat(src), flat(fresh)
    for p in loaded:
        np.testing.assert_array_equal(np.asarray(got[p]), np.asarray(s[p]))
    for p in ("classifier/kernel", "classifier/bias"):
        np.testing.assert_array_equal(np.asarray(got[p]), np.asarray(f[p]))
    assert jax.tree.structure(params) == jax.tree.structure(fresh)
    # The same works from the step dir and from the checkpoints dir.
    for source in (workdir / "checkpoints" / "5", workdir / "checkpoints"):
        assert {p for p, _ in init_from(source, fresh, verbose=False)[1].loaded} == loaded


def test_loads_onto_target_sharding(pretrained):
    workdir, src = pretrained
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "tensor"))
    fresh = Classifier().init(jax.random.key(1), IDS)["params"]
    fresh = jax.tree.map(
        lambda x: jax.device_put(
            x,
            NamedSharding(mesh, P(None, "tensor") if x.ndim == 2 and x.shape[1] % 4 == 0 else P()),
        ),
        fresh,
    )
    params, _ = init_from(workdir, fresh, verbose=False)
    emb = params["bert"]["word_embeddings"]["embedding"]
    assert emb.sharding == NamedSharding(mesh, P(None, "tensor"))
    np.testing.assert_array_equal(
        np.asarray(emb), np.asarray(src["bert"]["word_embeddings"]["embedding"])
    )


def test_shape_mismatch_error_and_vocab_resize(pretrained):
    workdir, src = pretrained
    fresh = Classifier(vocab=V + 4).init(jax.random.key(1), IDS)["params"]
    with pytest.raises(ValueError) as e:
        init_from(workdir, fresh)
    assert "bert/word_embeddings/embedding: checkpoint (12, 8) vs model (16, 8)" in str(e.value)
    assert "allow_vocab_resize" in str(e.value)

    params, report = init_from(workdir, fresh, allow_vocab_resize=True, verbose=False)
    assert report.resized == [("bert/word_embeddings/embedding", (V, D), (V + 4, D))]
    emb = np.asarray(params["bert"]["word_embeddings"]["embedding"])
    np.testing.assert_array_equal(emb[:V], np.asarray(src["bert"]["word_embeddings"]["embedding"]))
    np.testing.assert_array_equal(
        emb[V:], np.asarray(fresh["bert"]["word_embeddings"]["embedding"])[V:]
    )

    # Shrinking keeps the first rows; a non-vocab change is still an error.
    small = Pretrain(vocab=V - 2).init(jax.random.key(1), IDS)["params"]
    params, report = init_from(workdir, small, allow_vocab_resize=True, verbose=False)
    assert {p for p, _, _ in report.resized} == {
        "bert/word_embeddings/embedding",
        "cls/kernel",
        "cls/bias",
    }
    np.testing.assert_array_equal(
        np.asarray(params["cls"]["bias"]), np.asarray(src["cls"]["bias"])[: V - 2]
    )
    wide = Classifier().init(jax.random.key(1), IDS)["params"]
    wide["bert"]["dense"]["kernel"] = jnp.zeros((D, D + 1))
    with pytest.raises(ValueError, match="bert/dense/kernel"):
        init_from(workdir, wide, allow_vocab_resize=True)


def test_config_tokenizer_and_sources(pretrained, tmp_path):
    workdir, _ = pretrained
    assert ck.read_checkpoint_config(workdir) == {"model": {"name": "bert", "size": "tiny"}}
    assert ck.tokenizer_dir(workdir) is None  # saved without one
    with pytest.raises(FileNotFoundError):
        init_from(tmp_path / "empty", {}, verbose=False)
    try:
        import pjx.hf as hf  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pjx.hf"):
            init_from("hf:/nowhere", {}, verbose=False)
