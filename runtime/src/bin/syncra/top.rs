//! `syncra top`: the whole process family live in a terminal — nodes (state, pid,
//! incarnation, restarts, uptime, tick, their own figures and note), streams (rate, consumers'
//! lag and drops) and the last events — with keys to restart, stop and start the selected node
//! and to read its crash records.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, TableState, Wrap};
use syncra_runtime::protocol::control::{ControlReply, ControlRequest, CrashEntry, StreamView};
use syncra_runtime::protocol::status::{NodeState, StatusReport};
use syncra_runtime::{ControlClient, EventStream};

/// How often the status and streams are asked for.
const REFRESH: Duration = Duration::from_millis(500);
/// Events kept on screen.
const EVENTS_KEPT: usize = 200;

struct Model {
    run_dir: PathBuf,
    status: Option<StatusReport>,
    streams: Vec<StreamView>,
    events: VecDeque<String>,
    /// The selected node's crash records, while shown.
    crashes: Option<(String, Vec<CrashEntry>)>,
    table: TableState,
    /// The last action's outcome, or why the runtime cannot be reached.
    message: String,
}

impl Model {
    fn selected(&self) -> Option<String> {
        let nodes = &self.status.as_ref()?.nodes;
        nodes
            .get(self.table.selected()?)
            .map(|n| n.name.to_string())
    }
}

async fn ask(run_dir: &Path, req: ControlRequest) -> Result<ControlReply, String> {
    ControlClient::connect(run_dir)
        .await
        .map_err(|e| e.to_string())?
        .request(req)
        .await
        .map_err(|e| e.to_string())
}

/// Run `syncra top` until `q`.
pub(crate) async fn run(run_dir: PathBuf) -> Result<(), String> {
    // Reach the runtime before taking over the terminal: a wrong run directory is an error on
    // the command line, not a blank screen.
    let first = match ask(&run_dir, ControlRequest::Status).await? {
        ControlReply::Status(s) => s,
        other => return Err(format!("unexpected answer: {other:?}")),
    };
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel::<String>(256);
    let subscriber = tokio::spawn(follow(run_dir.clone(), events_tx));
    let mut model = Model {
        run_dir,
        status: Some(first),
        streams: Vec::new(),
        events: VecDeque::new(),
        crashes: None,
        table: TableState::default().with_selected(Some(0)),
        message: String::new(),
    };
    let mut terminal = ratatui::init();
    let result = async {
        let mut refreshed: Option<Instant> = None;
        loop {
            if refreshed.is_none_or(|t| t.elapsed() >= REFRESH) {
                refresh(&mut model).await;
                refreshed = Some(Instant::now());
            }
            while let Ok(line) = events_rx.try_recv() {
                if model.events.len() >= EVENTS_KEPT {
                    model.events.pop_front();
                }
                model.events.push_back(line);
            }
            terminal
                .draw(|f| draw(f, &mut model))
                .map_err(|e| e.to_string())?;
            // Keys, briefly; the event subscription runs between.
            if event::poll(Duration::from_millis(50)).map_err(|e| e.to_string())?
                && let Event::Key(key) = event::read().map_err(|e| e.to_string())?
                && key.kind == KeyEventKind::Press
                && !on_key(&mut model, key.code).await
            {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
    }
    .await;
    ratatui::restore();
    subscriber.abort();
    result
}

/// Follow the runtime's lifecycle events as lines.
async fn follow(run_dir: PathBuf, out: tokio::sync::mpsc::Sender<String>) {
    let stream: Result<EventStream, _> = match ControlClient::connect(&run_dir).await {
        Ok(c) => c.subscribe().await,
        Err(e) => Err(e),
    };
    let Ok(mut stream) = stream else {
        let _ = out.send("(events unavailable)".into()).await;
        return;
    };
    while let Ok(ev) = stream.next().await {
        if out.send(super::describe(&ev)).await.is_err() {
            return;
        }
    }
    let _ = out
        .send("(the runtime closed its event stream)".into())
        .await;
}

async fn refresh(model: &mut Model) {
    match ask(&model.run_dir, ControlRequest::Status).await {
        Ok(ControlReply::Status(s)) => {
            let n = s.nodes.len();
            model.status = Some(s);
            if model.table.selected().is_none_or(|i| i >= n) {
                model.table.select(n.checked_sub(1));
            }
        }
        Ok(other) => model.message = format!("unexpected answer: {other:?}"),
        Err(e) => model.message = format!("the runtime does not answer: {e}"),
    }
    if let Ok(ControlReply::Streams(s)) = ask(&model.run_dir, ControlRequest::Streams).await {
        model.streams = s;
    }
    if let Some((node, _)) = &model.crashes {
        let node = node.clone();
        if let Ok(ControlReply::Crashes(list)) = ask(
            &model.run_dir,
            ControlRequest::Crashes {
                node: Some(node.clone()),
                limit: 20,
            },
        )
        .await
        {
            model.crashes = Some((node, list));
        }
    }
}

/// Act on a key; false to quit.
async fn on_key(model: &mut Model, key: KeyCode) -> bool {
    let n = model.status.as_ref().map_or(0, |s| s.nodes.len());
    match key {
        KeyCode::Char('q') => return false,
        KeyCode::Esc if model.crashes.is_none() => return false,
        KeyCode::Esc => model.crashes = None,
        KeyCode::Down | KeyCode::Char('j') if n > 0 => {
            let i = model.table.selected().map_or(0, |i| (i + 1).min(n - 1));
            model.table.select(Some(i));
        }
        KeyCode::Up | KeyCode::Char('k') if n > 0 => {
            let i = model.table.selected().map_or(0, |i| i.saturating_sub(1));
            model.table.select(Some(i));
        }
        KeyCode::Char(c @ ('r' | 's' | 'a')) => {
            let Some(node) = model.selected() else {
                return true;
            };
            let (req, verb) = match c {
                'r' => (ControlRequest::Restart { node: node.clone() }, "restart"),
                's' => (ControlRequest::Stop { node: node.clone() }, "stop"),
                _ => (ControlRequest::Start { node: node.clone() }, "start"),
            };
            model.message = match ask(&model.run_dir, req).await {
                Ok(ControlReply::Error(e)) => format!("{verb} {node}: {}", e.message),
                Ok(_) => format!("{verb} {node}: asked"),
                Err(e) => format!("{verb} {node}: {e}"),
            };
        }
        KeyCode::Char('c') => match model.crashes.take() {
            Some(_) => {}
            None => {
                if let Some(node) = model.selected() {
                    model.crashes = Some((node, Vec::new()));
                    refresh(model).await;
                }
            }
        },
        _ => {}
    }
    true
}

fn state_style(state: NodeState) -> Style {
    match state {
        NodeState::Ready => Style::default().fg(Color::Green),
        NodeState::Failed => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        NodeState::Backoff | NodeState::Stopping => Style::default().fg(Color::Yellow),
        _ => Style::default(),
    }
}

fn draw(f: &mut ratatui::Frame, model: &mut Model) {
    let [head, nodes, streams, lower, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(6),
        Constraint::Length(7),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(f.area());

    let title = match &model.status {
        Some(s) => format!(
            "syncra top — runtime pid {}, up {}{} — {}",
            s.runtime.pid,
            super::human_ms(s.runtime.uptime_ms),
            if s.runtime.shutting_down {
                ", shutting down"
            } else {
                ""
            },
            model.run_dir.display()
        ),
        None => format!("syncra top — {}", model.run_dir.display()),
    };
    f.render_widget(
        Paragraph::new(title).style(Style::default().add_modifier(Modifier::BOLD)),
        head,
    );

    let dash = || "-".to_owned();
    let rows: Vec<Row> = model
        .status
        .iter()
        .flat_map(|s| &s.nodes)
        .map(|n| {
            let name = match &n.host {
                Some(h) => format!("{}@{h}", n.name),
                None => n.name.to_string(),
            };
            let mut said: Vec<String> = n
                .figures
                .iter()
                .map(|fig| format!("{} {}", fig.name, super::figure_value(fig.value)))
                .collect();
            said.extend(n.note.clone());
            said.extend(n.detail.clone());
            Row::new(vec![
                name,
                n.state.to_string(),
                n.pid.map(|p| p.to_string()).unwrap_or_else(dash),
                n.incarnation.to_string(),
                n.restarts.to_string(),
                n.uptime_ms.map(super::human_ms).unwrap_or_else(dash),
                n.tick.map(|t| t.to_string()).unwrap_or_else(dash),
                said.join("; "),
            ])
            .style(state_style(n.state))
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(22),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(4),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(vec![
            "NODE",
            "STATE",
            "PID",
            "INC",
            "RESTARTS",
            "UPTIME",
            "TICK",
            "FIGURES / NOTE",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
    .block(Block::default().borders(Borders::ALL).title(" nodes "));
    f.render_stateful_widget(table, nodes, &mut model.table);

    let stream_rows: Vec<Row> = model
        .streams
        .iter()
        .map(|s| {
            let consumers: Vec<String> = s
                .consumers
                .iter()
                .map(|c| format!("{} lag {} dropped {}", c.node, c.lag, c.dropped))
                .collect();
            Row::new(vec![
                s.name.clone(),
                s.producer.to_string(),
                format!("{:.1}/s", s.rate_hz),
                s.published.to_string(),
                consumers.join(", "),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            stream_rows,
            [
                Constraint::Length(28),
                Constraint::Length(18),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Fill(1),
            ],
        )
        .header(
            Row::new(vec!["STREAM", "PRODUCER", "RATE", "SEQ", "CONSUMERS"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::ALL).title(" streams ")),
        streams,
    );

    match &model.crashes {
        Some((node, list)) => {
            let mut lines: Vec<Line> = Vec::new();
            if list.is_empty() {
                lines.push(Line::from(format!("no crash records for {node}")));
            }
            for c in list.iter().rev() {
                let r = &c.record;
                lines.push(Line::from(format!(
                    "{} #{} {}: {}",
                    r.timestamp, r.incarnation, r.reason, r.detail
                )));
                lines.push(Line::from(format!("  decision: {}", r.decision)));
                if let Some(p) = &r.panic {
                    lines.push(Line::from(format!("  panic: {}", p.message)));
                }
                if let Some(d) = &r.dump {
                    if let Some(path) = &d.path {
                        lines.push(Line::from(format!("  minidump: {path}")));
                    }
                    for (i, frame) in d.stack.iter().take(8).enumerate() {
                        lines.push(Line::from(format!("    #{i} {frame}")));
                    }
                }
                lines.push(Line::from(format!("  record: {}", c.path)));
            }
            f.render_widget(
                Paragraph::new(lines).wrap(Wrap { trim: false }).block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!(" crash records of {node} (c or Esc: back) ")),
                ),
                lower,
            );
        }
        None => {
            let height = lower.height.saturating_sub(2) as usize;
            let lines: Vec<Line> = model
                .events
                .iter()
                .rev()
                .take(height)
                .rev()
                .map(|l| Line::from(l.as_str()))
                .collect();
            f.render_widget(
                Paragraph::new(lines)
                    .block(Block::default().borders(Borders::ALL).title(" events ")),
                lower,
            );
        }
    }
    f.render_widget(
        Paragraph::new(format!(
            "↑↓ select  r restart  s stop  a start  c crash records  q quit   {}",
            model.message
        ))
        .style(Style::default().add_modifier(Modifier::DIM)),
        keys,
    );
}
