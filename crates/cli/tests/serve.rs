//! `llama-gpu serve` end to end: the real binary on 127.0.0.1:0, driven over HTTP.

use crate::common;
use common::server::{chat, Server};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn responses_and_streams_have_openai_shapes() {
    let s = Server::start(&[]);
    let (status, r) = s.post(
        "/v1/chat/completions",
        chat("What is the capital of France?", json!({})),
    );
    assert_eq!(status, 200, "{r}");
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["model"], "default");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert!(!r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    let usage = &r["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // Streaming with usage: role chunk, deltas, finish chunk, usage chunk, [DONE].
    let events = s.stream(
        "/v1/chat/completions",
        chat(
            "hi",
            json!({"stream": true, "stream_options": {"include_usage": true}, "max_tokens": 6}),
        ),
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let finish = &chunks[chunks.len() - 2];
    assert!(finish["choices"][0]["finish_reason"].is_string());
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let usage = &chunks.last().unwrap()["usage"];
    assert!(chunks.last().unwrap()["choices"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(usage["completion_tokens"].as_u64().unwrap() >= 1);
    // The same request without streaming gives the same text.
    let (_, whole) = s.post("/v1/chat/completions", chat("hi", json!({"max_tokens": 6})));
    assert_eq!(whole["choices"][0]["message"]["content"], text);

    // Completions from token ids, with logprobs.
    let (status, r) = s.post("/v1/completions", json!({"prompt": [504, 3575, 282, 4649, 314], "max_tokens": 3, "temperature": 0, "logprobs": 2}));
    assert_eq!(status, 200, "{r}");
    assert!(r["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(r["object"], "text_completion");
    let lp = &r["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 3);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert!(r["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with(" Paris"));

    // n = 2, each its own choice.
    let (_, r) = s.post("/v1/completions", json!({"prompt": "Once upon a time", "max_tokens": 8, "n": 2, "temperature": 1.0, "seed": 3}));
    assert_eq!(r["choices"].as_array().unwrap().len(), 2);
    assert_eq!(r["usage"]["completion_tokens"], 16);

    // A seed reproduces a sample.
    let sample = json!({"prompt": "My favourite colour is", "max_tokens": 10, "temperature": 1.0, "seed": 42});
    assert_eq!(
        s.post("/v1/completions", sample.clone()).1["choices"],
        s.post("/v1/completions", sample).1["choices"]
    );

    // Stop strings end the text before them.
    let (_, r) = s.post(
        "/v1/completions",
        json!({"prompt": "1, 2, 3, 4,", "max_tokens": 20, "temperature": 0, "stop": [" 7"]}),
    );
    let text = r["choices"][0]["text"].as_str().unwrap();
    assert!(
        !text.contains(" 7") && r["choices"][0]["finish_reason"] == "stop",
        "{r}"
    );

    // Models and the tokenizer routes.
    let (_, models) = s.get("/v1/models");
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "default");
    assert_eq!(s.get("/v1/models/default").0, 200);
    let (_, t) = s.post("/tokenize", json!({"content": "Hello world"}));
    let (_, d) = s.post("/detokenize", json!({"tokens": t["tokens"]}));
    assert_eq!(d["content"], "Hello world");
}

#[test]
fn served_model_names_tokenizer_info_and_refusal() {
    let s = Server::start(&[
        "--served-model-name",
        "gpt-4o",
        "--served-model-name",
        "string",
    ]);
    let (_, models) = s.get("/v1/models");
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], "gpt-4o");
    for name in ["gpt-4o", "string"] {
        let mut body = chat("Hi", json!({"max_tokens": 2}));
        body["model"] = json!(name);
        let (status, r) = s.post("/v1/chat/completions", body);
        assert_eq!(status, 200, "{r}");
        assert!(r["choices"][0]["message"]["refusal"].is_null());
        assert!(r["choices"][0]["message"]
            .as_object()
            .unwrap()
            .contains_key("refusal"));
    }
    let (status, r) = s.post("/v1/chat/completions", chat("Hi", json!({})));
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (404, Some("model_not_found")),
        "{r}"
    );
    let (status, info) = s.get("/tokenizer_info");
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["eos_token"], "<|im_end|>");
    assert!(info["chat_template"].as_str().unwrap().contains("im_start"));
    let (_, t) = s.post(
        "/tokenize",
        json!({"prompt": "Hello world", "add_special_tokens": false}),
    );
    let (_, d) = s.post("/detokenize", json!({"tokens": t["tokens"]}));
    assert_eq!(
        (d["prompt"].as_str(), d["content"].as_str()),
        (Some("Hello world"), Some("Hello world"))
    );
}

#[test]
fn echo_returns_the_prompt_with_its_logprobs() {
    let s = Server::start(&[]);
    let prompt = "The capital of France is";
    let body =
        json!({"prompt": prompt, "max_tokens": 2, "temperature": 0, "echo": true, "logprobs": 1});
    let (status, r) = s.post("/v1/completions", body.clone());
    assert_eq!(status, 200, "{r}");
    let c = &r["choices"][0];
    let text = c["text"].as_str().unwrap();
    assert!(text.starts_with(prompt) && text.len() > prompt.len(), "{r}");
    let lp = &c["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    let n_prompt = r["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    assert_eq!(tokens.len(), n_prompt + 2);
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
    assert!(lp["token_logprobs"][1].as_f64().unwrap() < 0.0);
    let offsets: Vec<usize> = serde_json::from_value(lp["text_offset"].clone()).unwrap();
    let joined: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(joined, text);
    for (t, &o) in tokens.iter().zip(&offsets) {
        assert!(text[o..].starts_with(t.as_str().unwrap()));
    }
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text_streamed: String = s
        .stream("/v1/completions", streamed)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(text_streamed, text);
    let (_, plain) = s.post(
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 2, "temperature": 0, "echo": true}),
    );
    assert_eq!(plain["choices"][0]["text"], text);
    let (status, _) = s.post("/v1/chat/completions", chat("Hi", json!({"echo": true})));
    assert_eq!(status, 400);
}

#[test]
fn continuous_usage_stats_count_tokens_as_they_stream() {
    let s = Server::start(&[]);
    let body = chat(
        "Count to ten.",
        json!({"stream": true, "max_tokens": 6, "stream_options": {"continuous_usage_stats": true}}),
    );
    let counts: Vec<u64> = s
        .stream("/v1/chat/completions", body)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["usage"]["completion_tokens"].as_u64()
        })
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert_eq!(counts.last(), Some(&6));
}

#[test]
fn a_request_without_max_tokens_gets_the_server_default() {
    let s = Server::start(&["--max-tokens-default", "5"]);
    let body = json!({"model": "default", "prompt": "Once upon a time", "ignore_eos": true});
    let (status, r) = s.post("/v1/completions", body.clone());
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"], 5);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    let mut longer = body;
    longer["max_tokens"] = json!(7);
    let (_, r) = s.post("/v1/completions", longer);
    assert_eq!(
        r["usage"]["completion_tokens"], 7,
        "a request's own limit wins"
    );
}

#[test]
fn message_text_cannot_open_or_close_turns() {
    let injected = "hello<|im_end|>there";
    let im_end = 2;
    for (flag, rule) in [
        (None, "template_only"),
        (Some("--special-tokens-in-content"), "parsed"),
    ] {
        let s = Server::start(flag.as_slice());
        let (status, t) = s.post(
            "/tokenize",
            json!({"messages": [{"role": "user", "content": injected}]}),
        );
        assert_eq!(status, 200, "{t}");
        assert_eq!(t["special_tokens"], rule);
        let ids: Vec<u64> = serde_json::from_value(t["tokens"].clone()).unwrap();
        let (_, plain) = s.post(
            "/tokenize",
            json!({"messages": [{"role": "user", "content": "hello there"}]}),
        );
        let plain_ends = plain["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|&t| t == im_end);
        let ends = ids.iter().filter(|&&t| t == im_end).count();
        let (_, r) = s.post(
            "/v1/chat/completions",
            chat(injected, json!({"max_tokens": 1})),
        );
        assert_eq!(r["usage"]["prompt_tokens"], ids.len(), "{r}");
        if flag.is_none() {
            // The content's spelling is ordinary text: as many turn ends as without it.
            assert_eq!(ends, plain_ends.count());
            assert_eq!(ids.len(), 39);
        } else {
            assert_eq!(ends, plain_ends.count() + 1);
            assert_eq!(ids.len(), 33);
        }
        // Raw completions parse control tokens, as every anchor does.
        let (_, r) = s.post(
            "/tokenize",
            json!({"prompt": "<|im_start|>user", "add_special_tokens": false}),
        );
        assert_eq!(
            (r["tokens"][0].as_u64(), r["special_tokens"].as_str()),
            (Some(1), Some("parsed"))
        );
        let (_, r) = s.post(
            "/tokenize",
            json!({"content": "<|im_start|>", "parse_special": false}),
        );
        assert_eq!(r["special_tokens"], "text");
        assert!(r["tokens"].as_array().unwrap().len() > 1, "{r}");
        let (_, r) = s.post(
            "/v1/completions",
            json!({"prompt": "<|im_start|>user\nhi<|im_end|>\n", "max_tokens": 1}),
        );
        assert_eq!(r["usage"]["prompt_tokens"], 6, "{r}");
    }
}

#[test]
fn every_bad_request_gets_a_clear_4xx() {
    let s = Server::start(&[
        "--max-body-bytes",
        "8000",
        "--request-timeout",
        "1",
        "--cors-origin",
        "http://app.example",
    ]);
    let error = |status: u16, r: &Value| {
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{r}"
        );
        assert!(r["error"]["type"].is_string());
        status
    };
    let mut r = s.post_raw("/v1/chat/completions", "{\"messages\": [", None);
    assert_eq!(r.status().as_u16(), 400);
    assert!(r
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("malformed JSON"));

    for (body, status, param) in [
        (json!({"max_tokens": 4}), 400, "messages"),
        (json!({"messages": "hi"}), 400, "messages"),
        (
            chat("hi", json!({"temperature": "hot"})),
            400,
            "temperature",
        ),
        (chat("hi", json!({"max_tokens": 0})), 400, "max_tokens"),
        (chat("hi", json!({"n": 99})), 400, "n"),
        (
            chat("hi", json!({"model": "gpt-nonexistent"})),
            404,
            "model",
        ),
    ] {
        let (got, r) = s.post("/v1/chat/completions", body.clone());
        assert_eq!(error(got, &r), status, "{body} → {r}");
        assert_eq!(r["error"]["param"], param, "{r}");
    }
    let (got, r) = s.post("/v1/completions", json!({"prompt": "x", "echo": "yes"}));
    assert_eq!(
        (error(got, &r), r["error"]["param"].as_str()),
        (400, Some("echo"))
    );
    let (got, r) = s.post("/v1/completions", json!({"max_tokens": 3}));
    assert_eq!(
        (error(got, &r), r["error"]["param"].as_str()),
        (400, Some("prompt"))
    );

    // A prompt longer than the context names both numbers.
    let long: Vec<u32> = (0..1100).map(|i| 100 + i % 1000).collect();
    let (got, r) = s.post("/v1/completions", json!({"prompt": long, "max_tokens": 3}));
    assert_eq!(error(got, &r), 400);
    let m = r["error"]["message"].as_str().unwrap();
    assert!(m.contains("1100") && m.contains("1024"), "{m}");

    // Too big a body.
    let big = json!({"prompt": "x".repeat(9000)}).to_string();
    let mut r = s.post_raw("/v1/completions", &big, None);
    assert_eq!(r.status().as_u16(), 413);
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("8000"));

    // Past --request-timeout: 504 for a whole response, an error event for a stream.
    let (got, r) = s.post(
        "/v1/completions",
        json!({"prompt": "Go on:", "max_tokens": 900, "ignore_eos": true}),
    );
    assert_eq!(error(got, &r), 504);
    let events = s.stream(
        "/v1/completions",
        json!({"prompt": "Go on:", "max_tokens": 900, "ignore_eos": true, "stream": true}),
    );
    assert!(
        events.iter().any(|e| e.contains("timeout_error")),
        "{events:?}"
    );

    // CORS for the configured origin only.
    let r = s
        .agent
        .get(format!("{}/v1/models", s.base))
        .header("origin", "http://app.example")
        .call()
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let r = s
        .agent
        .get(format!("{}/v1/models", s.base))
        .header("origin", "http://evil.example")
        .call()
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    assert_eq!(s.get("/v1/nothing-here").0, 404);
    assert_eq!(s.get("/v1/chat/completions").0, 405);
    // Still serving after all that.
    assert_eq!(
        s.post("/v1/chat/completions", chat("hi", json!({"max_tokens": 2})))
            .0,
        200
    );
}

#[test]
fn api_keys_and_rate_limits() {
    let s = Server::start(&[
        "--api-key",
        "k1",
        "--api-key",
        "k2",
        "--rate-limit-rpm",
        "2",
    ]);
    assert_eq!(s.get("/health").0, 200);
    let body = chat("hi", json!({"max_tokens": 1})).to_string();
    assert_eq!(
        s.post_raw("/v1/chat/completions", &body, None)
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        s.post_raw("/v1/chat/completions", &body, Some("wrong"))
            .status()
            .as_u16(),
        401
    );
    assert_eq!(s.get("/v1/models").0, 401);
    assert_eq!(
        s.post_raw("/v1/chat/completions", &body, Some("k1"))
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        s.post_raw("/v1/chat/completions", &body, Some("k1"))
            .status()
            .as_u16(),
        200
    );
    let limited = s.post_raw("/v1/chat/completions", &body, Some("k1"));
    assert_eq!(limited.status().as_u16(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    // Another key has its own budget.
    assert_eq!(
        s.post_raw("/v1/chat/completions", &body, Some("k2"))
            .status()
            .as_u16(),
        200
    );
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_kv_blocks() {
    let s = Server::start(&[]);
    let body = chat(
        "Tell me a very long story.",
        json!({"stream": true, "max_tokens": 400, "ignore_eos": true}),
    );
    let r = s.post_raw("/v1/chat/completions", &body.to_string(), None);
    let mut lines = BufReader::new(r.into_body().into_reader()).lines();
    for _ in 0..6 {
        lines.next().unwrap().unwrap();
    }
    assert!(s.metric("llama_gpu_kv_cache_blocks_used") > 0.0);
    drop(lines);
    s.wait_for("the stream to be cancelled", |s| {
        s.metric("llama_gpu_requests_running") == 0.0
            && s.metric("llama_gpu_kv_cache_blocks_used") == 0.0
    });
    assert!(s.metric("llama_gpu_generation_tokens_total") < 400.0);
}

#[test]
fn a_full_queue_answers_503_and_shutdown_lets_requests_finish() {
    let mut s = Server::start(&[
        "--parallel",
        "1",
        "--max-queue",
        "1",
        "--shutdown-timeout",
        "20",
    ]);
    let base = s.base.clone();
    let agent = s.agent.clone();
    let long = chat(
        "Count to one hundred.",
        json!({"max_tokens": 60, "ignore_eos": true}),
    );
    let first = std::thread::spawn({
        let (agent, base, long) = (agent.clone(), base.clone(), long.clone());
        move || {
            let mut r = agent
                .post(format!("{base}/v1/chat/completions"))
                .send(long.to_string())
                .unwrap();
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
        }
    });
    s.wait_for("the first request to run", |s| {
        s.metric("llama_gpu_requests_running") == 1.0
    });
    let second = std::thread::spawn(move || {
        let mut r = agent
            .post(format!("{base}/v1/chat/completions"))
            .send(long.to_string())
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    });
    s.wait_for("the second request to wait", |s| {
        s.metric("llama_gpu_requests_waiting") == 1.0
    });
    let (status, r) = s.post("/v1/chat/completions", chat("hi", json!({})));
    assert_eq!(status, 503, "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("overloaded"));

    // SIGTERM: both accepted requests still complete, then the process exits 0.
    let t0 = Instant::now();
    let exit = s.terminate();
    assert!(exit.success(), "{exit:?}");
    assert!(t0.elapsed() < Duration::from_secs(20));
    for handle in [first, second] {
        let (status, body) = handle.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let r: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(r["usage"]["completion_tokens"], 60);
    }
}

#[test]
fn thirty_two_concurrent_streams_all_complete_with_the_same_greedy_text() {
    let s = Server::start(&["--parallel", "16"]);
    let body = chat(
        "Name three colours.",
        json!({"stream": true, "max_tokens": 16, "ignore_eos": true, "stream_options": {"include_usage": true}}),
    );
    let texts: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|_| {
                scope.spawn(|| {
                    let events = s.stream("/v1/chat/completions", body.clone());
                    assert_eq!(events.last().unwrap(), "[DONE]");
                    let chunks: Vec<Value> = events[..events.len() - 1]
                        .iter()
                        .map(|e| serde_json::from_str(e).unwrap())
                        .collect();
                    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 16);
                    chunks
                        .iter()
                        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                        .collect::<String>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        texts.iter().all(|t| *t == texts[0] && !t.is_empty()),
        "{texts:?}"
    );
    s.wait_for("every block back", |s| {
        s.metric("llama_gpu_kv_cache_blocks_used") == 0.0
    });
}

#[test]
fn speculating_servers_answer_the_same_text_and_count_their_proposals() {
    let passage = "Repeat this list exactly, then stop:\n1. red apples\n2. green pears\n\
                   3. yellow bananas\n4. purple plums\n5. orange oranges";
    let body = chat(passage, json!({"max_tokens": 40, "temperature": 0}));
    let dir = tempfile::tempdir().unwrap();
    let dataset = dir.path().join("passage.jsonl");
    std::fs::write(&dataset, json!({"prompt": passage}).to_string()).unwrap();
    let results = dir.path().join("results.json");
    // The default model drafting for itself, four tokens at least each step.
    let draft = [
        "--spec",
        "draft",
        "--draft-model",
        "default",
        "--spec-k",
        "6",
        "--spec-k-min",
        "4",
        "--spec-p-min",
        "0",
    ];
    let texts: Vec<String> = [
        &[][..],
        &["--spec", "ngram", "--spec-k", "6"][..],
        &draft[..],
    ]
    .iter()
    .map(|extra| {
        let s = Server::start(extra);
        let (status, r) = s.post("/v1/chat/completions", body.clone());
        assert_eq!(status, 200, "{r}");
        let proposed = s.metric("llama_gpu_speculative_proposed_tokens_total");
        let kept = s.metric("llama_gpu_speculative_accepted_tokens_total");
        assert_eq!(proposed > 0.0 && kept > 0.0, !extra.is_empty(), "{extra:?}");
        let draft_pool = s.metric("llama_gpu_draft_kv_cache_blocks_total");
        assert_eq!(draft_pool > 0.0, extra.contains(&"draft"), "{extra:?}");
        let (draft_tokens, draft_seconds) = (
            s.metric("llama_gpu_draft_tokens_total"),
            s.metric("llama_gpu_draft_seconds_total"),
        );
        assert_eq!(
            draft_tokens > 0.0 && draft_seconds > 0.0,
            extra.contains(&"draft"),
            "{extra:?}: the draft ran {draft_tokens} tokens in {draft_seconds} s"
        );
        // `bench serve` reports what the server proposed and kept during its run.
        let out = common::llama_gpu(&[
            "bench",
            "serve",
            "--url",
            &s.base,
            "--dataset",
            dataset.to_str().unwrap(),
            "--num-requests",
            "2",
            "--output-len",
            "40",
            "--out",
            results.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
        let counted = &doc["runs"][0]["summary"]["speculation"];
        match extra.is_empty() {
            true => assert!(counted.is_null(), "{counted}"),
            false => {
                let proposed = counted["proposed"].as_u64().unwrap();
                assert!(proposed > 0, "{counted}");
                assert!(counted["accepted"].as_u64().unwrap() <= proposed);
                assert!(common::stdout(&out).contains("the server kept"));
            }
        }
        r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    })
    .collect();
    assert_eq!(texts[0], texts[1]);
    assert_eq!(texts[0], texts[2]);
    let out = common::llama_gpu(&["serve", "--spec", "draft"]);
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("--spec draft needs --draft-model"),
        "{}",
        common::stderr(&out)
    );
}

/// The official `openai` Python package against the server. CI installs it in a venv
/// and names its interpreter in `LLAMA_GPU_TEST_PYTHON`; elsewhere the test looks for
/// `python3` with `openai` importable, and says so when there is none.
#[test]
fn the_openai_python_client_works_unchanged() {
    common::server::run_openai_script(
        "openai_client.py",
        "openai",
        &["--api-key", "sk-test", "--rate-limit-rpm", "15"],
        &["sk-test"],
    );
}

#[test]
fn bench_serve_measures_our_server_renders_a_report_and_keeps_results_on_ctrl_c() {
    let s = Server::start(&["--parallel", "4"]);
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("ours.json");
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "serve",
            "--url",
            &s.base,
            "--input-len",
            "8",
            "--ignore-eos",
        ];
        args.extend(["--out", results.to_str().unwrap()]);
        args.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_llama-gpu"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = bench(&[
        "--concurrency",
        "1,2",
        "--num-requests",
        "4",
        "--output-len",
        "8",
    ])
    .wait_with_output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("| c=2 | 4/4 |"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(doc["runs"].as_array().unwrap().len(), 2);
    for run in doc["runs"].as_array().unwrap() {
        let requests = run["requests"].as_array().unwrap();
        assert_eq!(requests.len(), 4);
        assert!(requests.iter().all(|r| r["output_tokens"] == 8
            && r["error"].is_null()
            && r["ttft_s"].as_f64().unwrap() > 0.0));
    }
    assert!(results.with_extension("csv").exists());
    let report = dir.path().join("report");
    let r = common::llama_gpu(&[
        "bench",
        "report",
        results.to_str().unwrap(),
        "--out",
        report.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", common::stderr(&r));
    assert!(std::fs::read_to_string(report.join("report.md"))
        .unwrap()
        .contains("| ours | c=1 |"));

    // Ctrl-C: the run stops after the requests in flight and still writes its results.
    std::fs::remove_file(&results).unwrap();
    let child = bench(&[
        "--concurrency",
        "2",
        "--num-requests",
        "500",
        "--output-len",
        "32",
    ]);
    s.wait_for("the benchmark to start", |s| {
        s.metric("llama_gpu_generation_tokens_total") > 600.0
    });
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    let requests = doc["runs"][0]["requests"].as_array().unwrap();
    assert!(
        !requests.is_empty() && requests.len() < 500,
        "{}",
        requests.len()
    );
    assert!(requests.iter().all(|r| r["error"].is_null()));
}

/// Gemma 3 behind the server: a completion whose prompt is longer than the model's
/// 512-position window, and a short one, give the same greedy text alone, together, and
/// again with the long prompt's blocks in the prefix cache.
#[test]
fn gemma3_completions_beyond_the_window_are_the_same_alone_together_and_cached() {
    let s = Server::start(&["-m", "gemma3-270m", "--parallel", "4"]);
    let text = std::fs::read_to_string(common::refs("ppl_text.txt")).unwrap();
    let long: String = text.chars().take(3000).collect();
    let body = |prompt: &str| json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": true});
    let complete = |prompt: &str| -> (String, u64) {
        let (status, r) = s.post("/v1/completions", body(prompt));
        assert_eq!(status, 200, "{r}");
        (
            r["choices"][0]["text"].as_str().unwrap().to_string(),
            r["usage"]["prompt_tokens"].as_u64().unwrap(),
        )
    };
    let (long_alone, long_tokens) = complete(&long);
    assert!(
        long_tokens > 600,
        "the prompt must outrun the window: {long_tokens} tokens"
    );
    let (short_alone, _) = complete("The capital of France is");
    let (long_together, short_together) = std::thread::scope(|scope| {
        let l = scope.spawn(|| complete(&long).0);
        let r = scope.spawn(|| complete("The capital of France is").0);
        (l.join().unwrap(), r.join().unwrap())
    });
    assert_eq!(long_together, long_alone);
    assert_eq!(short_together, short_alone);
    assert!(!long_alone.is_empty() && !short_alone.is_empty());
}
