"""ipywidgets for the notebooks. Each shows its default result when the cell runs, so a notebook
executed without a browser (tests, stored outputs) still shows what the knobs do."""
from __future__ import annotations

import torch


def sampling_playground(model, tokenizer, prompt: str = "ROMEO:\n", max_new_tokens: int = 200):
    """Sliders for temperature, top-k, top-p and seed over model.generate; prints the default sample."""
    import ipywidgets as w
    from IPython.display import display

    temperature = w.FloatSlider(value=0.8, min=0.0, max=2.0, step=0.05, description="temperature")
    top_k = w.IntSlider(value=0, min=0, max=tokenizer.vocab_size, description="top-k (0=off)")
    top_p = w.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p")
    seed = w.IntText(value=0, description="seed")
    text = w.Text(value=prompt, description="prompt")
    out = w.Output(layout={"border": "1px solid #ddd"})

    def sample(temperature_, top_k_, top_p_, seed_, prompt_):
        ids = torch.tensor([tokenizer.encode(prompt_)], device=next(model.parameters()).device)
        gen = model.generate(ids, max_new_tokens, temperature=temperature_, top_k=top_k_ or None,
                             top_p=top_p_ if top_p_ < 1 else None, seed=seed_)
        return tokenizer.decode(gen[0].tolist())

    def refresh(_=None):
        out.clear_output()
        with out:
            try:
                print(sample(temperature.value, top_k.value, top_p.value, seed.value, text.value))
            except Exception as exc:  # a character outside the vocabulary, say
                print(f"⚠ {exc}")

    for knob in (temperature, top_k, top_p, seed, text):
        knob.observe(refresh, names="value")
    print(f"temperature={temperature.value}, top-k=off, top-p=off, seed=0:\n")
    print(sample(temperature.value, 0, 1.0, 0, prompt))
    display(w.VBox([w.HBox([temperature, top_k]), w.HBox([top_p, seed]), text, out]))
    refresh()
