"""Med-MIM (arXiv 2505.19031) + MedHallTune (arXiv 2502.20780): medical multi-image QA and hallucination evaluation.

Modules: `data` (Med-MIM JSON, MedHallTune JSONL, VLMEvalKit TSV; validation; writers), `synth` (procedural
scans and questions with exact answers), `model` (a small multi-image VLM on the DuoMind decoder), `train`
(its two-stage recipe: caption pre-alignment, instruction tuning; full or LoRA), `backends` (local VLM, Hugging Face image-text-to-text, OpenAI-compatible endpoints),
`eval` (accuracy per ability, the four-score judge rubric, ROUGE-L / BLEU, report), `cli`.
"""
