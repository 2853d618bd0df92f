"""SEAP on the real SmolLM2: a mask built for a task suits that task's text better than another's."""

from __future__ import annotations

import pytest
import torch

import prunekit
from prunekit.data import calibration_from_texts, calibration_ids, eval_windows
from prunekit.eval import perplexity

pytestmark = pytest.mark.slow

# Prose written for this test (not taken from anywhere): narrative English, far from Python docs.
PROSE_CALIBRATION = [
    "The rain had not stopped for three days, and the river behind the mill was louder than anyone in"
    " the village could remember. Martha stood at the kitchen window with her hands wrapped around a "
    "cup of tea that had long gone cold, watching the water climb the stone steps one by one.",
    "Her brother had promised to come back before dark. He had taken the cart to town in the morning "
    "to sell the last of the apples, and he always lingered at the inn, telling stories to anyone who"
    " would buy him a drink. She did not blame him for that. The winter had been long, and laughter "
    "was scarce.",
    "When the church bell rang seven, she lit the lamp and set two plates on the table. The bread was"
    " still warm. Outside, the wind pushed against the shutters as if it wanted to come in and sit by"
    " the fire, and the old dog lifted his head from the rug, listening for wheels on the road.",
    "Years later she would tell her grandchildren about that night, about the lantern swinging in the"
    " dark and the shape of a man walking beside a tired horse, soaked to the bone and singing. They "
    "never quite believed her, but they always asked her to tell it again.",
]
PROSE_HELD_OUT = (
    "In the spring the orchard turned white almost overnight. The children ran between the trees with"
    " baskets they did not need yet, and their mother pretended not to see them stealing bread from "
    "the kitchen. Down by the river the mill wheel turned slowly again, and the miller, who had grown"
    " thin over the winter, stood in the doorway with his hat in his hand, greeting every cart that "
    "passed as if it carried an old friend. Nobody spoke of the flood anymore. It had become one of "
    "those stories that belong to the evenings, told quietly after supper, when the fire is low and "
    "the youngest have fallen asleep on their parents' laps."
)


def test_a_task_mask_beats_the_other_task_mask_on_its_own_text(smollm2):
    model, tok = smollm2
    model = model.__class__(model.config)  # a private copy of the weights
    model.load_state_dict(smollm2[0].state_dict())
    model.eval()
    calibration = {
        "code": calibration_ids(tok, n_samples=8, seq_len=128),
        "prose": calibration_from_texts(PROSE_CALIBRATION * 3, tok, n_samples=8, seq_len=128),
    }
    code_eval = eval_windows(tok, seq_len=128, max_windows=6)
    prose_eval = torch.tensor([[tok.bos_token_id, *tok(PROSE_HELD_OUT, add_special_tokens=False).input_ids]])
    masks = prunekit.task_masks(model, calibration, sparsity=0.3)
    ppl = {}
    for task in ("code", "prose"):
        masks.apply(task)
        ppl[task] = {"code": perplexity(model, code_eval), "prose": perplexity(model, prose_eval)}
    masks.reset()
    assert ppl["code"]["code"] < ppl["prose"]["code"]
    assert ppl["prose"]["prose"] < ppl["code"]["prose"]
    dense_prose = perplexity(model, prose_eval)
    assert dense_prose < ppl["prose"]["prose"]
