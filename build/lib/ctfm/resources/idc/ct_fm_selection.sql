-- CT-FM pretraining selection: the query of supplement S1 of "Vision Foundation Models for Computed
-- Tomography" (CT-FM), for Google BigQuery over the public NCI Imaging Data Commons tables.
--
-- Placeholders, filled in by `ctfm idc-manifest --backend bigquery` (tools/idc_manifest.py):
--   {{IDC_DATASET}}           dataset the series are selected from. The paper: idc_v14.
--   {{METADATA_IDC_DATASET}}  dataset the output columns are read from. The paper: idc_v18.
-- Each is `idc_v<N>` for IDC release N, or `idc_current`.
--
-- The selection (both WHERE clauses, the JOIN and the GROUP BY) is the paper's text verbatim.
-- The only change is one added output column, StudyInstanceUID, marked below; it selects nothing.
WITH
  idc_instances_per_series AS (
    SELECT
      SeriesInstanceUID,
      COUNT(DISTINCT(SOPInstanceUID)) AS num_instances,
      COUNT(DISTINCT(ARRAY_TO_STRING(ImagePositionPatient, "/"))) AS position_count,
      MAX(SAFE_CAST(SliceThickness AS float64)) AS max_SliceThickness,
      MIN(SAFE_CAST(SliceThickness AS float64)) AS min_SliceThickness,
      STRING_AGG(DISTINCT(SAFE_CAST("LOCALIZER" IN UNNEST(ImageType) AS string)), "") AS has_localizer
    FROM
      `bigquery-public-data.{{IDC_DATASET}}.dicom_all`
    WHERE
      Modality = "CT" and
      access = "Public"
    GROUP BY
      SeriesInstanceUID)
SELECT
  dicom_all.SeriesInstanceUID,
  ANY_VALUE(dicom_all.collection_id) as collection_id,
  ANY_VALUE(dicom_all.PatientID) AS PatientID,
  ANY_VALUE(dicom_all.StudyInstanceUID) AS StudyInstanceUID,  -- added by ctfm: output column only
  ANY_VALUE(idc_instances_per_series.num_instances) AS num_instances,
  ANY_VALUE(CONCAT("https://viewer.imaging.datacommons.cancer.gov/viewer/",
dicom_all.StudyInstanceUID, "?seriesInstanceUID=", dicom_all.SeriesInstanceUID)) AS
idc_url
FROM
  `bigquery-public-data.{{METADATA_IDC_DATASET}}.dicom_all` AS dicom_all
JOIN
  idc_instances_per_series
ON
  dicom_all.SeriesInstanceUID = idc_instances_per_series.SeriesInstanceUID
WHERE
  idc_instances_per_series.min_SliceThickness >= 1
  AND idc_instances_per_series.max_SliceThickness <= 5
  AND idc_instances_per_series.num_instances > 50
  AND idc_instances_per_series.num_instances/idc_instances_per_series.position_count = 1
  AND has_localizer = "false"
GROUP BY
  SeriesInstanceUID
