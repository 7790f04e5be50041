"""inferd: an on-prem, single-host, multi-GPU image-classification appliance.

The design's entry modules sit at the top and wire the packages together: api.py (the Falcon app),
dispatcher.py (picks a shard and enqueues), gpu_worker.py (one shard's worker loop), shard.py (shard
discovery and pinning), launcher.py (`inferd`); settings.py, errors.py and logs.py are the base every part
uses. The packages, each named after what it owns:

    queue/    the Redis protocol between API and shards: keys, Lua scripts, wire format, the two faces
    model/    the classifier, the active model, the embedded default, the checkpoint reader, the stand-in
    images/   an upload checked and decoded into the model's input
    worker/   a shard worker's parts: start, batching, one batch's inference, model swap, device truth, heartbeat
    ops/      running the appliance: run dir, front door, capacity, notify, shard watch, drain, NVML, shard status
    metrics/  Prometheus metrics
    http/     the HTTP surface: readiness, deadline, KServe V2, OpenAPI, status page, body checks, gunicorn
    cli/      the `inferd drain|undrain|reload` commands and what every operator command shares

Layers run one way. A module may import its own package and what its row names; nothing else
(tests/unit/test_layers.py checks every import, naming file and line):

    | unit                        | may import                                              |
    | --------------------------- | ------------------------------------------------------- |
    | settings, errors, logs      | each other only                                         |
    | queue/, images/             | base                                                    |
    | ops/nvml.py                 | base                                                    |
    | shard.py                    | base, ops/nvml.py                                       |
    | ops/                        | base, queue, shard                                      |
    | model/                      | base, queue, ops                                        |
    | metrics/                    | base, queue, ops                                        |
    | worker/                     | base, queue, model, shard                               |
    | dispatcher.py               | base, queue                                             |
    | http/                       | base, queue, model, images, metrics, ops, dispatcher    |
    | cli/                        | base, queue, model, ops                                 |
    | api, gpu_worker, launcher   | anything in daemon/ (nothing in daemon/ imports them)   |

http/ and worker/ never import each other: the API and a shard meet only in Redis (queue/). Outside daemon/:
tools/ (operator programs) may import daemon/; testkit/ (test infrastructure, not installed) may import
daemon/; bench/ may import daemon/, tools/ and testkit/, never tests/; nothing imports tests/, and daemon/
imports none of them.
"""
