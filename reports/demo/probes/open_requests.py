"""The student's LLM (teacher tuning, stage 2, step 100) typed open requests: it answers everything in one word.

    XOPD_HOME=$PWD/.xopd-home .venv/bin/python reports/demo/probes/open_requests.py
"""
import torch
from xopd.world import align
torch.set_num_threads(1)
ad = align.build_student("xopd-speech-smollm2", "smollm2-135m-instruct", "artifacts/world/teacher2/step-000100")
asks = [("Describe a cat in one sentence.", ""), ("Write a short poem about the sea.", ""), ("What is the capital of France?", ""),
        ("Tell me something about elephants.", ""), ("Give me three words that rhyme with cat.", ""), ("Why is the sky blue?", "Answer in one sentence.")]
for (q, i), o in zip(asks, align.own_responses(ad.core, ad, asks, 40)):
    print(repr(q), "->", repr(ad.tokenizer.decode(o)))
