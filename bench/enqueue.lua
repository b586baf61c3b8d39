-- wrk script: POST /enqueue of a small demo intent (each request creates an intent and a run).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("MACHINA_BENCH_TOKEN")
wrk.body = '{"goal":"bench","inputs":{"words":["a","b"]},"recipe":"demo","queuePartitionKey":"bench"}'
