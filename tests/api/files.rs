//! Files over REST: upload, name them in specs as `file:<id>`, download, delete; hostile
//! archives and oversize uploads are refused and leave nothing behind.

use std::io::Write;

use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{slow_spec, small_spec, spawn_app, spawn_app_with, TestApp};

impl TestApp {
    async fn upload_part(&self, part: Part) -> reqwest::Response {
        let form = Form::new().part("file", part).text("purpose", "dataset");
        self.client.post(self.url("/v1/files")).multipart(form).send().await.unwrap()
    }

    async fn upload(&self, name: &str, bytes: Vec<u8>) -> Value {
        let response = self.upload_part(Part::bytes(bytes).file_name(name.to_string())).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Uploads `bytes`, expects `status` and `code`, and returns the message.
    async fn refused_upload(&self, name: &str, bytes: Vec<u8>, status: u16, code: &str) -> String {
        let response = self.upload_part(Part::bytes(bytes).file_name(name.to_string())).await;
        assert_eq!(response.status(), status, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        body["error"]["message"].as_str().unwrap().to_string()
    }

    /// No upload is recorded or left on disk, finished or half-received.
    async fn assert_no_files(&self) {
        assert_eq!(self.get_json("/v1/files").await["data"], json!([]));
        let files = self.data_dir.path().join("files");
        let left: Vec<_> = std::fs::read_dir(&files).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [".incoming"], "files/ holds {left:?}");
        assert_eq!(std::fs::read_dir(files.join(".incoming")).unwrap().count(), 0, "a staged upload was left");
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Four numeric features; the label is the index of the largest of the first three.
fn table_csv() -> Vec<u8> {
    let mut text = String::from("a,b,c,d,label\n");
    for i in 0..120u32 {
        let v = [(i * 7 % 11) as f32, (i * 5 % 13) as f32, (i * 3 % 7) as f32, (i % 4) as f32];
        let label = (0..3).max_by(|&x, &y| v[x].total_cmp(&v[y])).unwrap();
        text.push_str(&format!("{},{},{},{},{label}\n", v[0], v[1], v[2], v[3]));
    }
    text.into_bytes()
}

fn csv_job(path: &str) -> Value {
    let mut spec = small_spec(2);
    spec["dataset"] = json!({"source": "csv", "path": path});
    spec["baseline"] = json!(false);
    spec
}

/// A gzipped tar of the tiny BERT fixture under a top-level `tiny-bert/` folder.
fn tiny_bert_tar_gz() -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    tar.append_dir_all("tiny-bert", "tests/fixtures/tiny-bert").unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

/// A tar of one entry whose name is written as is (`tar::Builder` refuses `..` and absolute
/// names, as a hostile tool would not).
fn raw_tar(name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    if let Some(link) = link {
        header.set_link_name(link).unwrap();
    }
    header.set_cksum();
    let mut tar = tar::Builder::new(Vec::new());
    tar.append(&header, data).unwrap();
    tar.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[tokio::test]
async fn an_uploaded_csv_trains_a_job_and_downloads_byte_identical() {
    let app = spawn_app().await;
    let csv = table_csv();
    let file = app.upload("train.csv", csv.clone()).await;
    assert_eq!(
        (&file["filename"], &file["bytes"], &file["sha256"], &file["purpose"], &file["unpacked"]),
        (&json!("train.csv"), &json!(csv.len()), &json!(sha256(&csv)), &json!("dataset"), &json!(false))
    );
    let id = file["id"].as_str().unwrap();
    assert_eq!(app.get_json(&format!("/v1/files/{id}")).await, file);
    assert_eq!(app.get_json("/v1/files?limit=1").await, json!({"data": [file], "has_more": false}));

    let download = app.get(&format!("/v1/files/{id}/content")).await;
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["x-content-sha256"], sha256(&csv).as_str());
    assert_eq!(download.headers()["content-disposition"], "attachment; filename=\"train.csv\"");
    let bytes = download.bytes().await.unwrap();
    assert_eq!(sha256(&bytes), sha256(&csv));
    assert_eq!(bytes, csv);

    let job = app.submit(&csv_job(&format!("file:{id}"))).await;
    let done = app.wait_for_status(&job, &["succeeded", "failed"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let report = app.get_json(&format!("/v1/jobs/{job}/report")).await;
    assert!(report["student"]["accuracy"].is_number(), "{report}");

    // Past the 1 MiB limit on other bodies: the upload has its own.
    let weights: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let file = app.upload("weights.bin", weights.clone()).await;
    assert_eq!(file["sha256"], sha256(&weights));
    let download = app.get(&format!("/v1/files/{}/content", file["id"].as_str().unwrap())).await;
    assert_eq!(download.bytes().await.unwrap(), weights);
}

#[tokio::test]
async fn an_uploaded_hugging_face_folder_is_a_teacher() {
    let app = spawn_app().await;
    let teacher = app.upload("tiny-bert.tar.gz", tiny_bert_tar_gz()).await;
    assert_eq!(teacher["unpacked"], true);
    let rows: String = (0..60)
        .map(|i| format!("{} movie,{}\n", ["a good", "an okay", "a bad"][i % 3], ["pos", "neu", "neg"][i % 3]))
        .collect();
    let reviews = app.upload("reviews.csv", format!("text,label\n{rows}").into_bytes()).await;
    let spec = json!({
        "dataset": {"source": "text", "path": format!("file:{}", reviews["id"].as_str().unwrap()),
                    "label_column": "label", "max_length": 8},
        "teacher": {"arch": {"kind": "transformer", "path": format!("file:{}", teacher["id"].as_str().unwrap())}},
        "student": {"arch": {"kind": "transformer", "layers": [2]}},
        "distill": {"temperature": 2, "alpha": 0.5},
        "training": {"epochs": 1, "batch_size": 16, "optimizer": {"kind": "adamw", "lr": 0.001}}
    });
    let job = app.submit(&spec).await;
    let done = app.wait_for_status(&job, &["succeeded", "failed"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    // A path inside the archive, and one that is not there, are checked like data-root paths.
    let mut missing = spec.clone();
    missing["teacher"]["arch"]["path"] = json!(format!("file:{}/nested", teacher["id"].as_str().unwrap()));
    let response = app.post_json("/v1/jobs", &missing).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "teacher.arch.path", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("does not exist in the uploaded archive"), "{body}");
}

#[tokio::test]
async fn unsafe_archive_entries_are_refused_and_leave_nothing() {
    let app = spawn_app().await;
    use tar::EntryType as T;
    let cases = [
        ("up.tar", raw_tar("../x.csv", T::Regular, None, b"a,label\n1,0\n"), "../x.csv"),
        ("absolute.tar.gz", gzip(&raw_tar("/etc/x.csv", T::Regular, None, b"a")), "/etc/x.csv"),
        ("symlink.tar", raw_tar("config.json", T::Symlink, Some("/etc/passwd"), b""), "symbolic link"),
        ("hardlink.tgz", gzip(&raw_tar("config.json", T::Link, Some("/etc/passwd"), b"")), "hard link"),
        ("device.tar", raw_tar("tty", T::Char, None, b""), "a device"),
    ];
    for (name, bytes, named) in cases {
        let message = app.refused_upload(name, bytes, 422, "unsafe_archive").await;
        assert!(message.contains(named), "{name}: {message}");
    }
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.add_symlink("model.safetensors", "/etc/passwd", zip::write::SimpleFileOptions::default()).unwrap();
    let message = app.refused_upload("link.zip", zip.finish().unwrap().into_inner(), 422, "unsafe_archive").await;
    assert!(message.contains("symbolic link"), "{message}");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("../../evil.txt", zip::write::SimpleFileOptions::default()).unwrap();
    zip.write_all(b"x").unwrap();
    let message = app.refused_upload("up.zip", zip.finish().unwrap().into_inner(), 422, "unsafe_archive").await;
    assert!(message.contains("../../evil.txt"), "{message}");
    let message = app.refused_upload("broken.tar.gz", b"not gzip".to_vec(), 422, "invalid_archive").await;
    assert!(message.contains("not a readable tar archive"), "{message}");
    app.assert_no_files().await;
}

#[tokio::test]
async fn archive_bombs_and_oversize_uploads_are_refused_naming_the_limit() {
    let app = spawn_app_with(|config| config.max_upload_bytes = 1 << 20).await;
    let zeros = |n: usize| raw_tar("zeros.bin", tar::EntryType::Regular, None, &vec![0; n]);
    let message = app.refused_upload("bomb.tar.gz", gzip(&zeros(3 << 20)), 413, "archive_too_large").await;
    assert!(message.contains("compression ratio"), "{message}");
    // Incompressible bytes keep the ratio low; together they unpack past 4 × 1 MiB.
    let mut noise = vec![0u8; 200 << 10];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for byte in &mut noise {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(noise.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "noise.bin", &noise[..]).unwrap();
    header.set_size(5 << 20);
    tar.append_data(&mut header, "zeros.bin", std::io::Read::take(std::io::repeat(0), 5 << 20)).unwrap();
    let bytes = gzip(&tar.into_inner().unwrap());
    let message = app.refused_upload("big.tar.gz", bytes, 413, "archive_too_large").await;
    assert!(message.contains("4.0 MiB, the limit on unpacked bytes"), "{message}");
    let mut tar = tar::Builder::new(Vec::new());
    for i in 0..10_001 {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(0);
        tar.append_data(&mut header, format!("f{i}"), &b""[..]).unwrap();
    }
    let message = app.refused_upload("many.tar.gz", gzip(&tar.into_inner().unwrap()), 413, "archive_too_large").await;
    assert!(message.contains("more than 10000 entries"), "{message}");

    let message = app.refused_upload("big.csv", vec![b'1'; (1 << 20) + 1], 413, "payload_too_large").await;
    assert!(message.contains("--max-upload-bytes") && message.contains("1048576 bytes"), "{message}");
    // Sent without a length, the upload is cut off while it streams.
    let chunks = (0..20).map(|_| Ok::<_, std::io::Error>(vec![b'1'; 64 << 10]));
    let part = Part::stream(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))).file_name("big.csv");
    let response = app.upload_part(part).await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("--max-upload-bytes"), "{body}");
    app.assert_no_files().await;
}

#[tokio::test]
async fn a_file_a_waiting_job_names_is_kept_until_the_job_is_done() {
    let app = spawn_app().await;
    let file = app.upload("train.csv", table_csv()).await;
    let id = file["id"].as_str().unwrap();
    let blocker = app.submit(&slow_spec()).await;
    app.wait_for_status(&blocker, &["running"]).await;
    let job = app.submit(&csv_job(&format!("file:{id}"))).await;
    let response = app.client.delete(app.url(&format!("/v1/files/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "file_in_use");
    assert!(body["error"]["message"].as_str().unwrap().contains(&job), "{body}");

    app.client.post(app.url(&format!("/v1/jobs/{blocker}/cancel"))).send().await.unwrap();
    assert_eq!(app.wait_for_status(&job, &["succeeded", "failed"]).await["status"], "succeeded");
    let response = app.client.delete(app.url(&format!("/v1/files/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(app.get(&format!("/v1/files/{id}")).await.status(), 404);
    assert_eq!(app.get(&format!("/v1/files/{id}/content")).await.status(), 404);
    app.assert_no_files().await;

    let response = app.post_json("/v1/jobs", &csv_job(&format!("file:{id}"))).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "dataset.path");
    assert!(body["error"]["message"].as_str().unwrap().contains("no uploaded file has this id"), "{body}");
}

#[tokio::test]
async fn uploads_that_are_not_one_file_part_are_refused() {
    let app = spawn_app().await;
    let response = app.post_json("/v1/files", &json!({"file": "x"})).await;
    assert_eq!(response.status(), 415);
    let form = Form::new().text("purpose", "dataset");
    let response = app.client.post(app.url("/v1/files")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!((&body["error"]["code"], &body["error"]["field"]), (&json!("invalid_upload"), &json!("file")));
    let form = Form::new().part("file", Part::bytes(b"x".to_vec()).file_name("x.csv")).text("purpose", "weights");
    let response = app.client.post(app.url("/v1/files")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "purpose", "{body}");
    app.assert_no_files().await;
}

#[tokio::test]
async fn a_slow_upload_may_outlast_the_request_timeout_but_not_stall() {
    let app = spawn_app_with(|config| config.request_timeout_secs = 1).await;
    let paced = |pause_ms: u64, chunks: usize| {
        let stream = futures_util::stream::unfold(0, move |sent| async move {
            if sent == chunks {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
            Some((Ok::<_, std::io::Error>(b"a,label\n".repeat(4)), sent + 1))
        });
        Part::stream(reqwest::Body::wrap_stream(stream)).file_name("slow.csv")
    };
    let response = app.upload_part(paced(400, 5)).await;
    assert_eq!(response.status(), 201, "2 s of steady progress, with a 1 s timeout");
    let response = app.upload_part(paced(2500, 2)).await;
    assert_eq!(response.status(), 408);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("--request-timeout-secs"), "{body}");
}
