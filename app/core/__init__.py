"""What training and serving share: one owner for each contract between them.

`preprocessing` (the image transform and the channel order), `model_store` (the manifest: schema, one reader, one
atomic writer), `onnx_models` (conversion and the ONNX Runtime adapter), `gate` (classifier threshold -> segmenter ->
mask threshold), `series_postprocessing` (the masks' clean-up), `outline` (drawing a mask's outline) and
`durable_files` (files replaced in one step).
Dependencies run one way: `app` -> `app.core` <- `training`. Nothing here imports the rest of `app` or `training`,
so the service ships without `training/`.
"""
