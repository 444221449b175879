"""What the paper does with CT-FM embeddings, one module per method (each ``ctfm`` tool is a thin CLI over one).

- :mod:`ctfm.analysis.embeddings`       512-d embeddings of whole volumes; many scans into a resumable folder
- :mod:`ctfm.analysis.patch_embeddings` sliding-window (patch) embeddings, per window or from one encoder pass
- :mod:`ctfm.analysis.scans`            a scan as read and on the CT-FM grid; coordinates; maps written back
- :mod:`ctfm.analysis.retrieval`        top-k retrieval (exact or faiss IVF) and its metrics; OrganMNIST3D
- :mod:`ctfm.analysis.clustering`       t-SNE of embeddings coloured by label
- :mod:`ctfm.analysis.search`           semantic concept search: a box in one scan -> best match in others
- :mod:`ctfm.analysis.ocd`              organ centroid distance of semantic search over a datalist
- :mod:`ctfm.analysis.pca`              PCA concept maps in CIELAB colours
- :mod:`ctfm.analysis.saliency`         occlusion-based feature deviation maps
- :mod:`ctfm.analysis.stability`        test-retest stability of patch embeddings
"""
