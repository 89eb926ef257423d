"""What Sandrun keeps outside a process: plugin storage, dead letters, job outputs,
delivery attempts, jobs' running leases and the registry of live workers, each on
Redis (or in memory).

May import: ``worker.broker`` (URL helpers, transient-error policies) and the
shared modules. Never the plugin host, the sandbox, the node or the client.
"""
