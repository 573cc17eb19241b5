"""The Slicer face's shared Qt side: the dialogs the module panel and the Segment Editor effect both open
(``Dialogs``) and the adapters that bind the host-free session to the Slicer application (``SlicerApp``: settings,
installer, the shared session).

A package folder, not a top-level .py: Slicer loads every .py at the top of qt-scripted-modules as a module.
"""
