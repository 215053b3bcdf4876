"""The edge box: cameras in, names out; its share of the federation's training.

Folders, from the lowest floor up (each folder's docstring says what it owns and
what it may import; tests/unit/test_layout.py holds every import to those lines):

    errors, priority          typed errors; how background work yields the CPU
    lifetime                  child processes that die with the process that started them
    http_thread               a WSGI app served in a thread (kiosk, recognition API)
    vision/  gallery/         frames to embeddings; who is enrolled and the match rule
    serving/                  the engine, the model versions, the hot swap
    training/                 fine-tuning on the box's own people (torch only here)
    federated/                the box's side of a round (MQTT, sealing, outbox)
    config, box               settings, and build_box(): the one assembly of a box
    kiosk/  api/              the staff page; the CompreFace-compatible recognition API
    demo/  cli/               the one-machine demo, fedface-edge
    provision, doctor         a technician's enrolment and checks

May import: nothing of the project.
"""
