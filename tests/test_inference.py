"""pjx.inference: a trained workdir is self-contained for loading and generation."""

import jax
import numpy as np

from pjx import cli, inference, run, tokenizers
from pjx import config as config_lib


def _run(tmp_path):
    tok = tokenizers.load("byte?specials=gpt2")
    c = config_lib.base_config()
    c.model.name, c.task = "gpt2", "clm"
    c.model.update(dict(max_position_embeddings=32, num_layers=1, hidden_size=32, num_heads=2))
    c.model.mlp_dim = 64
    c.data.seq_len, c.batch_size, c.steps, c.progress = 16, 4, 2, False

    def batches():
        rng = np.random.RandomState(0)
        while True:
            ids = rng.randint(0, tok.vocab_size, (4, 16)).astype(np.int32)
            yield {"input_ids": ids, "segment_ids": np.ones_like(ids)}

    workdir = str(tmp_path / "run")
    run.train(c, workdir, train_data=batches(), tokenizer=tok, devices=jax.devices()[:1])
    return workdir, tok


def test_load_and_generate_from_a_workdir(tmp_path, capsys):
    workdir, tok = _run(tmp_path)
    model, params, loaded_tok = inference.load(workdir)
    assert model.config.hidden_size == 32 and loaded_tok.vocab_size == tok.vocab_size
    # Greedy generation equals the argmax of full forward passes, token by token.
    text = inference.generate(workdir, "ab", max_new_tokens=4, temperature=0.0)
    ids = tok.encode("ab")
    for _ in range(4):
        logits = model.apply({"params": params}, np.asarray([ids], np.int32))["logits"]
        ids.append(int(np.argmax(logits[0, -1])))
    assert text == tok.decode(ids)
    capsys.readouterr()
    assert cli.main(["generate", workdir, "--prompt", "ab", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("ab")
    # Past the 32-token context the window slides: the text still grows by 99 tokens.
    assert cli.main(["generate", workdir, "--prompt", "ab", "--max-new-tokens", "99"]) == 0
    longer = inference.generate(workdir, "ab", max_new_tokens=99, temperature=0.0)
    assert longer.startswith(text) and len(longer.encode()) == 2 + 99
