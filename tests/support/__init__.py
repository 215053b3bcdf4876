"""Rigs the tests share: a real Mosquitto, scripted boxes, provisioned federations,
LFW faces for the kiosk. Test modules import from here, never from each other."""
