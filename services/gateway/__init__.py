"""The partner gateway (`imx gateway`): the partner's feed in, the partner's PACS or folder out.

- in: `imx.partner.<id>.v1`, `imx.partner.<id>.urgent.v1`, `imx.partner.<id>.bulk.v1` (PartnerDelivery,
  StudyComplete; urgent read first, see worker.py), consumer group `<id>.gateway`, signed
  in on the partner listener with the partner's SCRAM user; objects by WADO-RS with its DICOMweb key
- out: the target (`targets.py`: DIMSE C-STORE, STOW-RS or a folder) and `imx.receipts.<id>.v1`
  (DeliveryReceipt)
- state folder: temp files of fetches in flight, `stored.sqlite3` (what was stored), `dead-letters/`
"""
