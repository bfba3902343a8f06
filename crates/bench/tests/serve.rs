//! The load generator against a fake server that answers well, with errors, with a
//! malformed or truncated stream, or not at all: every request is recorded by kind and
//! the run goes on.

use bench::serve::{run, summarize, Endpoint, Load, Run, Slo, Target};
use bench::workload::synthetic;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Serves every connection with `answer(request number)` until the test ends.
fn fake_server(answer: fn(usize) -> &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || respond(conn, answer(i)));
        }
    });
    url
}

fn respond(mut conn: TcpStream, mode: &str) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let sse = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    let chunk = |t: &str| {
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{t}\"}}}}]}}\n\n")
    };
    let reply = match mode {
        "no_usage" => format!("{sse}{}{}data: [DONE]\n\n", chunk("ab"), chunk("cd")),
        "ok" => format!(
            "{sse}{}{}{}data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":3}}}}\n\ndata: [DONE]\n\n",
            chunk("a"), chunk("b"), chunk("c")
        ),
        "http500" => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_string(),
        "malformed" => format!("{sse}{}data: {{not json\n\n", chunk("a")),
        "truncated" => format!("{sse}{}", chunk("a")),
        "stall" => {
            let _ = conn.write_all(format!("{sse}{}", chunk("a")).as_bytes());
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
        _ => unreachable!(),
    };
    let _ = conn.write_all(reply.as_bytes());
}

fn run_against(url: String, requests: usize, concurrency: usize) -> Vec<bench::serve::Record> {
    run_with(url, requests, Load::Concurrency(concurrency), None)
}

fn run_with(
    url: String,
    requests: usize,
    load: Load,
    count_tokens: Option<bench::serve::TokenCounter>,
) -> Vec<bench::serve::Record> {
    let target = Target {
        url,
        api_key: None,
        model: None,
        endpoint: Endpoint::Chat,
        ignore_eos: true,
        timeout: Duration::from_millis(700),
        count_tokens,
    };
    let prompts = synthetic(4, 8, 3, 0.0, 0);
    let plan = Run {
        target: &target,
        load,
        prompts: &prompts,
        count: requests,
        duration: None,
        seed: 0,
    };
    run(
        &plan,
        &AtomicBool::new(false),
        &indicatif::ProgressBar::hidden(),
    )
    .0
}

#[test]
fn good_streams_are_timed_and_counted_from_usage() {
    let records = run_against(fake_server(|_| "ok"), 6, 3);
    assert_eq!(records.len(), 6);
    for r in &records {
        assert_eq!(r.error, None);
        assert_eq!((r.output_tokens, r.prompt_tokens), (3, Some(7)));
        assert!(r.usage_reported);
        assert!(r.ttft_s.is_some() && r.itl_s.len() == 2 && r.e2e_s >= r.ttft_s.unwrap());
    }
    let s = summarize(Load::Concurrency(3), &records, 1.0, &Slo::default());
    assert_eq!((s.completed, s.output_throughput), (6, 18.0));
}

#[test]
fn every_failure_is_recorded_by_kind_and_the_run_goes_on() {
    fn mixed(i: usize) -> &'static str {
        ["ok", "http500", "malformed", "truncated", "stall"][i % 5]
    }
    let records = run_against(fake_server(mixed), 10, 2);
    assert_eq!(records.len(), 10);
    let s = summarize(Load::Concurrency(2), &records, 1.0, &Slo::default());
    assert_eq!(s.completed, 2, "{:?}", s.errors);
    for kind in [
        "http_500",
        "malformed_stream",
        "incomplete_stream",
        "timeout",
    ] {
        assert_eq!(s.errors.get(kind), Some(&2), "{kind}: {:?}", s.errors);
    }
}

#[test]
fn an_unreachable_server_is_a_connect_error_per_request() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let records = run_against(format!("http://127.0.0.1:{port}"), 3, 1);
    assert!(
        records
            .iter()
            .all(|r| r.error.as_deref() == Some("connect")),
        "{records:?}"
    );
}

#[test]
fn without_usage_tokens_are_counted_by_the_tokenizer_or_by_chunks() {
    let url = fake_server(|_| "no_usage");
    let chunks = run_with(url.clone(), 2, Load::Concurrency(1), None);
    assert!(chunks
        .iter()
        .all(|r| r.output_tokens == 2 && !r.usage_reported));
    // A "tokenizer" of one token per character.
    let counter: bench::serve::TokenCounter = std::sync::Arc::new(|t: &str| t.chars().count());
    let counted = run_with(url, 2, Load::Concurrency(1), Some(counter));
    assert!(counted.iter().all(|r| r.output_tokens == 4), "{counted:?}");
}

#[test]
fn poisson_arrivals_send_every_request() {
    let records = run_with(fake_server(|_| "ok"), 5, Load::Rate(50.0), None);
    assert_eq!(records.len(), 5);
    assert!(records.iter().all(|r| r.error.is_none()));
    assert!(records.windows(2).all(|w| w[0].start_s <= w[1].start_s));
}
