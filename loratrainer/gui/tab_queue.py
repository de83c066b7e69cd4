"""Queue tab: the runs lined up (order, status, run folder), remove / move up / move down / retry / clear, and
"Run queue", which starts `loratrainer queue run` in a session of its own, so the queue goes on when the page
or the GUI is closed. "Add to queue" sits next to Start on the Training tab and is wired here.

Everything shown is read from the queue file (loratrainer.launch.run_queue) on each refresh; the GUI holds no
queue state of its own, so the CLI and the page can both change the queue.
"""

from __future__ import annotations

from loratrainer.errors import UserError
from loratrainer.gui import run_view
from loratrainer.gui.context import UiContext
from loratrainer.gui.i18n import md, sentence
from loratrainer.run.phases import phase_message

REFRESH_S = 2.0


class QueueHandlers:
    def __init__(self, ui: UiContext):
        self.ui = ui
        self.t = ui.t

    def queue(self):
        return self.ui.jobs.queue()  # the user's config folder (LORATRAINER_CONFIG_DIR), read on every call

    # -- what the page shows -----------------------------------------------------------------------------------

    def status_text(self, status: str) -> str:
        key = f"queue.status.{status}"
        text = self.t(key)
        return status if text == key else text

    def refresh(self, chosen: str | None = None, message: str | None = None) -> dict:
        import gradio as gr

        from loratrainer.launch.queue_runner import runner_running

        n = self.ui.named
        try:
            items = self.queue().items()
        except UserError as exc:
            return {n["queue_table"]: [], n["queue_item"]: gr.update(choices=[], value=None),
                    n["queue_message"]: self.notices(clear=False) + self.t.error(exc)}
        choices = [(f"{i}. {item.name} ({self.status_text(item.status)})", item.id) for i, item in enumerate(items, 1)]
        ids = [item.id for item in items]
        value = chosen if chosen in ids else (ids[0] if ids else None)
        running = runner_running(self.queue())
        line = self.t("queue.runner_on" if running else "queue.runner_off", count=sum(1 for i in items if i.status == "pending"))
        live, view = self.live(items)
        if message is None and view is not None and run_view.stop_waited(view) > 0:  # until it has stopped, not one tick
            message = self.t("queue.stopping", name=md(next(i.name for i in items if i.status == "running" and i.run_dir)))
        notices = self.notices(clear=message is not None)
        return {
            n["queue_table"]: [[k, it.id, it.name, self.status_text(it.status), it.run_dir, self.reason(it)] for k, it in enumerate(items, 1)],
            n["queue_item"]: gr.update(choices=choices, value=value),
            n["queue_message"]: notices + (message if message is not None else line),
            n["queue_live"]: live,
            n["queue_stop"]: gr.update(visible=view is not None),
            n["queue_stop_now"]: gr.update(visible=run_view.offers_stop_now(view)),
            n["queue_show_live"]: gr.update(visible=view is not None),
        }

    def reason(self, item) -> str:
        """Why an item ended, in the page's language: run_queue.item_reason, which `loratrainer queue list` says too
        (its run's events: a stop says where and what it saved; Stop now; else the queue file's own reason)."""
        from loratrainer.launch.run_queue import item_reason

        return self.t.message(item_reason(item, self.ui.jobs.run_state))

    def notices(self, clear: bool) -> str:
        """A damaged queue file that was set aside (launch/run_queue.py), in one sentence above the status line, as
        the CLI says it. The page refreshes every few seconds, so it stays until the user next acts on the queue
        (`clear`: that action's answer is the last one to carry it)."""
        said = "".join(f"⚠ {md(sentence(self.t.message(notice), self.t.lang))}.\n\n" for notice in dict.fromkeys(self.ui.jobs.queue_notices))
        if clear:
            self.ui.jobs.queue_notices.clear()
        return said

    def live(self, items) -> tuple[str, run_view.JobView | None]:
        """The running item's progress in one line (step, epoch, time left; or its phase while it loads and
        caches), and its JobView (None when no queued run goes)."""
        for item in items:
            if item.status == "running" and item.run_dir:
                view = self.ui.jobs.view(item.run_dir)
                if not view.alive:
                    return "", None
                s = view.state
                if run_view.stop_waited(view) > 0:
                    what = self.t("queue.live_stopping")
                elif s.total_steps:
                    what = self.t("queue.live_steps", step=s.step, total=s.total_steps, epoch=s.epoch, epochs=s.epochs)
                    if s.eta_s is not None:
                        what += ", " + self.t("progress.eta", eta=run_view.format_duration(s.eta_s))
                else:
                    phase = phase_message(s)
                    what = self.t.message(phase) if phase is not None else self.t("queue.live_starting")
                return self.t("queue.live", name=md(item.name), what=what), view
        return "", None

    # -- what the buttons do ----------------------------------------------------------------------------------

    def add(self, data: dict) -> dict:
        """The Training tab's "Add to queue": the config on the page, as it is now. The answer goes under the
        buttons (run_message), never over the status of a run that is going."""
        status = self.ui.named["run_message"]
        try:
            config = self.ui.read_config(data)
            item = self.queue().add(config)
        except UserError as exc:
            return {status: self.t.error(exc)}
        position = [i.id for i in self.queue().items()].index(item.id) + 1
        return {status: self.t("queue.added", name=md(item.name), position=position, id=item.id)}

    def _act(self, chosen: str | None, action) -> dict:
        if not chosen:
            return self.refresh(chosen, self.t("queue.choose"))
        try:
            message = action(self.queue(), chosen)
        except UserError as exc:
            return self.refresh(chosen, self.t.error(exc))
        return self.refresh(chosen, message)

    def remove(self, chosen: str | None) -> dict:
        def remove(q, i):
            item = next((it for it in q.items() if it.id == i), None)
            if item is not None and item.status == "running":  # Remove does not stop a run: it says what does
                return self.t("queue.remove_running", name=md(item.name))
            return self.t("queue.removed", name=md(q.remove(i).name))

        return self._act(chosen, remove)

    def stop(self) -> dict:
        """Stop the running queued run (its LoRA saved) and the queue after it; the runs after it stay pending."""
        from loratrainer.launch.queue_runner import stop_running

        item = stop_running(self.queue())
        if item is None:
            return self.refresh(None, self.t("queue.nothing_running"))
        return self.refresh(None, self.t("queue.stopping", name=md(item.name)))

    def stop_now(self) -> dict:
        from loratrainer.launch.queue_runner import stop_now

        item = stop_now(self.queue())
        if item is None:
            return self.refresh(None, self.t("queue.nothing_running"))
        return self.refresh(None, self.t("queue.stopped_now", name=md(item.name)))

    def show_live(self) -> dict:
        """The Training tab, following the queue's running run (its Stop works there too)."""
        import gradio as gr

        n = self.ui.named
        items = self.queue().items()
        run_dir = next((it.run_dir for it in items if it.status == "running" and it.run_dir), None)
        out = self.ui.handlers["training"].refresh(run_dir, -1) if run_dir else {}
        if "tabs" in n:
            out[n["tabs"]] = gr.Tabs(selected="training")
        return out

    def up(self, chosen: str | None) -> dict:
        return self._act(chosen, lambda q, i: q.move(i, -1))

    def down(self, chosen: str | None) -> dict:
        return self._act(chosen, lambda q, i: q.move(i, 1))

    def retry(self, chosen: str | None) -> dict:
        return self._act(chosen, lambda q, i: q.retry(i))

    def clear(self) -> dict:
        return self.refresh(None, self.t("queue.cleared", count=self.queue().clear()))

    def run(self) -> dict:
        from loratrainer.launch.queue_runner import runner_running, start_detached

        queue = self.queue()
        if runner_running(queue):
            return self.refresh(None, self.t("queue.runner_on", count=sum(1 for i in queue.items() if i.status == "pending")))
        start_detached(queue)
        return self.refresh(None, self.t("queue.started"))


def build(ui: UiContext) -> QueueHandlers:
    import gradio as gr

    t, n, h = ui.t, ui.named, QueueHandlers(ui)
    n["queue_message"] = gr.Markdown(elem_id="queue-message")
    with gr.Row():
        n["queue_live"] = gr.Markdown(elem_id="queue-live")
        n["queue_show_live"] = gr.Button(t("queue.show_live"), visible=False, scale=0, elem_id="queue-show-live")
        n["queue_stop"] = gr.Button(t("run.stop"), variant="stop", visible=False, scale=0, elem_id="queue-stop")
        n["queue_stop_now"] = gr.Button(t("run.stop_now"), variant="stop", visible=False, scale=0, elem_id="queue-stop-now")
    n["queue_table"] = gr.Dataframe(
        headers=[t("queue.col_position"), t("queue.col_id"), t("queue.col_name"), t("queue.col_status"), t("queue.col_run"), t("queue.col_reason")],
        datatype=["number", "str", "str", "str", "str", "str"], interactive=False, wrap=True, label=t("queue.title"), elem_id="queue-table",
    )
    with gr.Row():
        n["queue_item"] = gr.Dropdown(label=t("queue.item"), choices=[], scale=3, elem_id="queue-item")
        up = gr.Button(t("queue.up"), scale=1, elem_id="queue-up")
        down = gr.Button(t("queue.down"), scale=1, elem_id="queue-down")
        remove = gr.Button(t("queue.remove"), scale=1, variant="stop", elem_id="queue-remove")
        retry = gr.Button(t("queue.retry"), scale=1, elem_id="queue-retry")
    with gr.Row():
        run = gr.Button(t("queue.run"), variant="primary", elem_id="queue-run")
        clear = gr.Button(t("queue.clear"), elem_id="queue-clear")
    timer = gr.Timer(REFRESH_S)
    outputs = [n["queue_table"], n["queue_item"], n["queue_message"], n["queue_live"], n["queue_stop"], n["queue_stop_now"], n["queue_show_live"]]
    item = [n["queue_item"]]
    up.click(h.up, inputs=item, outputs=outputs, api_name="queue_up")
    down.click(h.down, inputs=item, outputs=outputs, api_name="queue_down")
    remove.click(h.remove, inputs=item, outputs=outputs, api_name="queue_remove")
    retry.click(h.retry, inputs=item, outputs=outputs, api_name="queue_retry")
    clear.click(h.clear, outputs=outputs, api_name="queue_clear")
    run.click(h.run, outputs=outputs, api_name="queue_run")
    n["queue_stop"].click(h.stop, outputs=outputs, api_name="queue_stop")
    n["queue_stop_now"].click(h.stop_now, outputs=outputs, api_name="queue_stop_now")

    def wire_show_live() -> None:  # the Training tab's live view is built by then
        live = [n[k] for k in ("run_dir", "status", "progress", "loss_plot", "log", "timer", "samples_seen", "gallery", "stop_button",
                               "run_notes", "stop_now_button", "resume_button") if k in n]
        n["queue_show_live"].click(h.show_live, outputs=live + ([n["tabs"]] if "tabs" in n else []), api_name="queue_show_live")

    ui.after_build(wire_show_live)
    timer.tick(h.refresh, inputs=item, outputs=outputs, api_visibility="private", show_progress="hidden")
    ui.on_load(h.refresh, inputs=item, outputs=outputs)

    def wire_add_button() -> None:
        button = n.get("add_to_queue")  # the Training tab's, next to Start
        if button is not None:
            button.click(h.add, inputs=ui.config_inputs(), outputs=[n["run_message"]], api_name="add_to_queue")

    ui.after_build(wire_add_button)
    return h
