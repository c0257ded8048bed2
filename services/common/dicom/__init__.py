"""DICOM helpers shared by the services: Part 10 encoding, header inspection, synthetic studies."""
