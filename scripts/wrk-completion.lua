-- wrk script for the admission figures of docs/OPERATIONS.md § Admission: one-token
-- completions of a 5-token prompt; wrk resends at once after a 503. Counts non-2xx answers.
--   apt-get install wrk
--   wrk -t2 -c1000 -d8s --timeout 120s --latency -s scripts/wrk-completion.lua \
--       http://127.0.0.1:8080/v1/completions
wrk.method = "POST"
wrk.body = '{"prompt": [1000, 870, 897, 124, 390], "max_tokens": 1, "temperature": 0}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("non-2xx answers: %d\n", summary.errors.status))
end
