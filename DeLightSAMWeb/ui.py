"""The page: trame-slicer's viewer layout (views, layouts, segment editor with its effects, segment list and undo)
with the De-LightSAM panel on top of the drawer. Controls that tests and users drive carry a stable
``data-testid``: upload, modality, apply, all-slices, cancel, box-mode, undo, redo, save, status. Inputs are plain
HTML elements (a file input, a select) so that any browser automation can set them."""

from __future__ import annotations


def _testid(name: str) -> list:
    return [f'data-testid="{name}"']


def build(app):
    from trame.widgets import html
    from trame.widgets.vuetify3 import (
        VBtn,
        VCard,
        VCardText,
        VCardTitle,
        VCheckbox,
        VDivider,
        VProgressLinear,
        VSlider,
        VSpacer,
    )
    from trame_slicer.app.ui import SegmentEditorToolbarUI, SegmentEditorUI, ViewerLayout

    server = app.server
    uploadTrigger = server.trigger_name(app.onUploadChunk)
    saveTrigger = server.trigger_name(_saveHandler(app))
    boxTrigger = server.trigger_name(app.onBox)
    server.state.dls_box_trigger = boxTrigger

    with ViewerLayout(server, title="De-LightSAM", is_drawer_visible=True) as layout:
        layout.title.set_text("De-LightSAM")
        server.state[layout.typed_state.name.active_tool] = SegmentEditorUI.__name__
        server.state[layout.typed_state.name.is_volume_loaded] = True
        with layout.appbar:
            html.Input(
                type="file",
                accept=".png,.jpg,.jpeg,.nrrd,.nii,.nii.gz,.mha,.dcm,.zip,application/dicom",
                multiple=True,
                raw_attrs=_testid("upload"),
                style="max-width: 260px; font-size: 12px;",
                change=(
                    "dls_status = 'uploading ...'; dls_error = false;"
                    f"window.load_files_by_chunks($event.target.files, {{ trigger_name: '{uploadTrigger}' }})"
                    ".finally(() => { $event.target.value = ''; });"
                ),
            )
            with html.Select(
                v_model=("dls_layout",),
                raw_attrs=_testid("layout"),
                classes="mx-2",
                style="border: 1px solid grey; padding: 2px 6px; color: inherit; background: transparent;",
            ):
                html.Option("{{ l }}", v_for="l in dls_layouts", key="l", value=("l",), style="color: black;")
        with layout.drawer:
            with VCard(flat=True, classes="mb-2"):
                VCardTitle("De-LightSAM", classes="text-subtitle-1")
                with VCardText(classes="py-1"):
                    with html.Div(classes="d-flex align-center mb-1"):
                        html.Label("Modality", classes="mr-2 text-body-2")
                        with html.Select(
                            v_model=("dls_modality",),
                            raw_attrs=_testid("modality"),
                            style="border: 1px solid grey; padding: 2px 6px; color: inherit; background: transparent;",
                        ):
                            html.Option(
                                "{{ m.text }}",
                                v_for="m in dls_modalities",
                                key="m.value",
                                value=("m.value",),
                                style="color: black;",
                            )
                    VSlider(
                        v_model=("dls_threshold",),
                        min=0.05,
                        max=0.95,
                        step=0.05,
                        label="Threshold",
                        thumb_label=True,
                        hide_details=True,
                        density="compact",
                        raw_attrs=_testid("threshold"),
                    )
                    VCheckbox(v_model=("dls_replace",), label="Replace", density="compact", hide_details=True)
                    VCheckbox(
                        v_model=("dls_keep_largest",), label="Keep largest region", density="compact", hide_details=True
                    )
                    VCheckbox(v_model=("dls_fill_holes",), label="Fill holes", density="compact", hide_details=True)
                    with html.Div(classes="d-flex flex-wrap ga-1 my-1"):
                        VBtn(
                            "Apply",
                            click=app.onApply,
                            disabled=("dls_busy || !dls_loaded",),
                            color="primary",
                            size="small",
                            raw_attrs=_testid("apply"),
                        )
                        VBtn(
                            "All slices",
                            click=app.onAllSlices,
                            disabled=("dls_busy || !dls_loaded",),
                            size="small",
                            raw_attrs=_testid("all-slices"),
                        )
                        VBtn(
                            "Cancel",
                            click=app.onCancel,
                            disabled=("!dls_busy",),
                            size="small",
                            raw_attrs=_testid("cancel"),
                        )
                        VBtn(
                            "Box",
                            click="dls_box_mode = !dls_box_mode",
                            variant=("dls_box_mode ? 'flat' : 'outlined'",),
                            color=("dls_box_mode ? 'secondary' : undefined",),
                            prepend_icon="mdi-selection-drag",
                            size="small",
                            raw_attrs=_testid("box-mode"),
                        )
                    with html.Div(classes="d-flex flex-wrap ga-1 my-1"):
                        VBtn(
                            "Undo",
                            click=app.onUndo,
                            disabled=(f"dls_busy || !{app.editorState.name.can_undo}",),
                            prepend_icon="mdi-undo",
                            size="small",
                            raw_attrs=_testid("undo"),
                        )
                        VBtn(
                            "Redo",
                            click=app.onRedo,
                            disabled=(f"dls_busy || !{app.editorState.name.can_redo}",),
                            prepend_icon="mdi-redo",
                            size="small",
                            raw_attrs=_testid("redo"),
                        )
                        VSpacer()
                    with html.Div(classes="d-flex align-center ga-1 my-1"):
                        with html.Select(
                            v_model=("dls_save_kind",),
                            raw_attrs=_testid("save-format"),
                            style="border: 1px solid grey; padding: 2px 6px; color: inherit; background: transparent;",
                        ):
                            html.Option(
                                "{{ k.text }}",
                                v_for="k in dls_save_kinds",
                                key="k.value",
                                value=("k.value",),
                                style="color: black;",
                            )
                        VBtn(
                            "Save",
                            click=(
                                f"trigger('{saveTrigger}').then((file) => file && "
                                "utils.download(file.name, file.data, 'application/octet-stream'))"
                            ),
                            disabled=("dls_busy || !dls_loaded",),
                            prepend_icon="mdi-download",
                            size="small",
                            raw_attrs=_testid("save"),
                        )
                    VProgressLinear(v_model=("dls_progress",), v_show=("dls_busy",), height=4, color="primary")
                    html.Div(
                        "{{ dls_status }}",
                        raw_attrs=_testid("status") + ['role="status"', 'aria-live="polite"'],
                        classes=("dls_error ? 'text-error text-body-2 mt-1' : 'text-body-2 mt-1'",),
                        style="white-space: pre-wrap; word-break: break-word;",
                    )
            VDivider()
            editorUI = SegmentEditorUI()
        with layout.toolbar:
            SegmentEditorToolbarUI(editor_ui=editorUI)
        with layout.content:
            app.layoutManager.initialize_layout_grid(layout)
    app.editorLogic.set_ui(editorUI)
    return layout


def _saveHandler(app):
    async def dls_save():
        attachment = await app.onSave()
        if attachment is None:
            return None
        return {"name": app.server.state.dls_save_name, "data": attachment}

    return dls_save


def boxOverlay(app, viewId: str) -> None:
    """A transparent layer over a slice view, shown in box mode: drag a rectangle (rubber band), release to segment
    it with LiteMedSAM, Esc to cancel (``static/box.js``)."""
    from trame.widgets import html

    html.Div(
        v_show=("dls_box_mode",),
        raw_attrs=[
            f'data-testid="box-overlay-{viewId}"',
            f"@pointerdown=\"window.delightsamBox.down($event, '{viewId}', dls_box_trigger)\"",
        ],
        classes="delightsam-box-overlay",
        style="position: absolute; inset: 0; z-index: 5; cursor: crosshair;",
    )
