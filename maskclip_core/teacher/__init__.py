"""The teacher: MaskCLIP's dense pseudo-labels from CLIP, and its training-free successors.

Modules:
- ``clip_loader``: CLIP through open_clip (model names, pretrained tags, local checkpoints, random weights)
- ``hub``: a quick probe of the model hub before a download, so an unreachable hub fails in seconds
- ``timm_weights``: timm encoders (the proxies, SAM) from the hub, a local file or random weights, one-line errors
- ``prompts``: the registry of prompt-template sets
- ``vocabulary``: the classes a user names, with synonyms and background queries
- ``text_classifier``: CLIP text embeddings of the vocabulary as a 1x1 classifier (cached)
- ``dense``: dense CLIP embeddings per patch; the attention-mode registry (MaskCLIP, ClearCLIP, SCLIP, NACLIP)
- ``proxy``: ProxyCLIP's vision-foundation-model proxy (DINO / DINOv2 through timm)
- ``sam``: SAM's image encoder through timm (weights, its input, its last block's attention)
- ``trident``: Trident's arithmetic: CLIP + DINO windows spliced, aggregated by SAM's affinity
- ``sam_refine``: Trident's optional refinement: the coarse labels as prompts for SAM's mask decoder
- ``trident_labeler``: the Trident teacher (``TridentLabeler``, ``TridentConfig``)
- ``refine``: key smoothing and prompt denoising
- ``pamr``: pixel-adaptive mask refinement
- ``fast_paths``: precision (bf16 / fp16 autocast, int8) and ``torch.compile`` paths
- ``global_block``: OV-Stitcher's global final block: the windows' last-block input stitched over the whole image
- ``window_predictor``: resize, sliding windows, stitching (``DensePredictor``, ``InferenceConfig``)
- ``labeler``: the ``MaskCLIPLabeler`` facade and its ``LabelerConfig``
"""
